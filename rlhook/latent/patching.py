"""Activation patching and path patching: swap activations of a *source* run into a *clean* run.

The clean inputs are the TensorDict's own input keys; the source inputs are ``("patched", k)`` for each input
``k`` (inputs without a ``("patched", k)`` entry are shared). Effects are measured by a *target* (any
``rlhook.targets`` target: an output key, a callable, a preset such as ``LogitDiff``/``ActionLogProb``) as
``target(patched run) - target(clean run)``, or by a *divergence* between the clean and patched outputs
(``CategoricalKL``, ``NormalKL`` or any ``(clean_td, patched_td) -> Tensor(batch)``). Targets and divergences
see the whole TensorDict of each run: its inputs (e.g. the taken ``"action"``) and its outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.hooked import get_key
from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.targets import Target, evaluate

__all__ = [
    "ActionLogProb",
    "ActivationPatching",
    "CategoricalKL",
    "LogitDiff",
    "NormalKL",
    "PathPatching",
    "source_td",
]

PatchFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Divergence = Callable[[TensorDictBase, TensorDictBase], torch.Tensor]


# -- targets and divergences ---------------------------------------------------------------------------------------
class LogitDiff:
    """``logits[..., a] - logits[..., b]``; ``a``/``b`` are class indices or keys of per-example indices."""

    def __init__(self, a: int | NestedKey, b: int | NestedKey, key: NestedKey = "output") -> None:
        self.a, self.b, self.key = a, b, key

    def _pick(self, out: TensorDictBase, logits: torch.Tensor, c: int | NestedKey) -> torch.Tensor:
        if isinstance(c, int):
            return logits[..., c]
        idx = get_key(out, c, what="class index").long()
        return logits.gather(-1, idx.reshape(*logits.shape[:-1], 1)).squeeze(-1)

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        logits = get_key(out, self.key, what="logits")
        return self._pick(out, logits, self.a) - self._pick(out, logits, self.b)

    def __repr__(self) -> str:
        return f"LogitDiff({self.a!r}, {self.b!r}, key={self.key!r})"


class ActionLogProb:
    """``log softmax(logits)[action]`` of a categorical policy; ``action`` holds indices or one-hot vectors."""

    def __init__(self, logits: NestedKey = "logits", action: NestedKey = "action") -> None:
        self.logits, self.action = logits, action

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        logp = torch.log_softmax(get_key(out, self.logits, what="logits"), -1)
        a = get_key(out, self.action, what="action")
        if a.shape == logp.shape:  # one-hot
            a = a.argmax(-1)
        return logp.gather(-1, a.long().reshape(*logp.shape[:-1], 1)).squeeze(-1)

    def __repr__(self) -> str:
        return f"ActionLogProb(logits={self.logits!r}, action={self.action!r})"


class CategoricalKL:
    """``KL(clean || patched)`` of categorical policies given by logits at ``key``; shape ``batch``."""

    def __init__(self, key: NestedKey = "logits") -> None:
        self.key = key

    def __call__(self, clean: TensorDictBase, patched: TensorDictBase) -> torch.Tensor:
        p = torch.log_softmax(get_key(clean, self.key, what="logits").double(), -1)
        q = torch.log_softmax(get_key(patched, self.key, what="logits").double(), -1)
        return (p.exp() * (p - q)).sum(-1).to(get_key(clean, self.key).dtype)


class NormalKL:
    """``KL(clean || patched)`` of diagonal Gaussian policies (``loc``, ``scale`` keys), summed over action dims."""

    def __init__(self, loc: NestedKey = "loc", scale: NestedKey = "scale") -> None:
        self.loc, self.scale = loc, scale

    def __call__(self, clean: TensorDictBase, patched: TensorDictBase) -> torch.Tensor:
        m0, s0 = get_key(clean, self.loc), get_key(clean, self.scale)
        m1, s1 = get_key(patched, self.loc), get_key(patched, self.scale)
        kl = torch.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5
        return kl.reshape(*kl.shape[: clean.batch_dims], -1).sum(-1)


# -- helpers -------------------------------------------------------------------------------------------------------
def source_td(td: TensorDictBase, in_keys: Sequence[NestedKey], source: str = "patched") -> TensorDictBase:
    """A shallow copy of ``td`` whose inputs are replaced by ``(source, k)`` where present, without ``source``."""
    src = td.exclude(source).copy()
    found = False
    for k in in_keys:
        parts = (k,) if isinstance(k, str) else tuple(k)
        v = td.get((source, *parts), None)
        if v is not None:
            src.set(k, v)
            found = True
    if not found:
        keys = [(source, *((k,) if isinstance(k, str) else k)) for k in in_keys]
        raise KeyError(
            f"no source input: the TensorDict needs at least one of {keys} next to the clean inputs"
        )
    return src


def _record(store: dict, name: str) -> Callable:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"module {name!r} returned {type(output).__name__}; patching needs tensor outputs"
            )
        store[name] = output

    return hook


def _set(value: Callable[[torch.Tensor], torch.Tensor], name: str) -> Callable:
    def hook(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
        new = value(output)
        if new.shape != output.shape:
            raise ValueError(
                f"patch of {name!r} has shape {tuple(new.shape)}, but the activation has shape {tuple(output.shape)}"
            )
        return new

    return hook


def _key(*parts: Any) -> tuple:
    out: list = []
    for p in parts:
        out.extend((p,) if isinstance(p, str) else p)
    return tuple(out)


class _Effects:
    """Shared effect bookkeeping for patching methods."""

    target: Target | None
    divergence: Divergence | None
    normalize: bool

    def _check_effect(self) -> None:
        if self.target is None and self.divergence is None:
            raise ValueError(
                "patching needs target=... (effect = target(patched) - target(clean)) and/or divergence=... "
                "(e.g. CategoricalKL('logits'))"
            )
        if self.normalize and self.target is None:
            raise ValueError("normalize=True rescales target effects; it needs target=...")

    def _effects(
        self, clean: TensorDictBase, patched: TensorDictBase, source: TensorDictBase
    ) -> dict[tuple, torch.Tensor]:
        """``{key suffix: per-example tensor}``: ``("patch_effect", [target])`` and ``("patch_divergence",)``."""
        out: dict[tuple, torch.Tensor] = {}
        if self.target is not None:
            t_clean, t_patch = evaluate(self.target, clean), evaluate(self.target, patched)
            t_src = evaluate(self.target, source) if self.normalize else None
            for tname, v in t_patch.items():
                effect = v - t_clean[tname]
                if t_src is not None:
                    effect = effect / (t_src[tname] - t_clean[tname])
                out[("patch_effect",) if tname is None else ("patch_effect", tname)] = effect
        if self.divergence is not None:
            out[("patch_divergence",)] = self.divergence(clean, patched)
        return out

    def _write_effects(
        self,
        td: TensorDictBase,
        name: str,
        clean: TensorDictBase,
        patched: TensorDictBase,
        source: TensorDictBase,
    ) -> None:
        for (kind, *rest), value in self._effects(clean, patched, source).items():
            td.set(_key(kind, name, *rest), value)


# -- activation patching ---------------------------------------------------------------------------------------------
class ActivationPatching(_Effects, Method):
    """Patch the activations of each module at ``paths`` (one at a time, or all ``jointly``) from the source run.

    Reads the clean inputs ``k`` and the source inputs ``("patched", k)``. Writes

    - the clean outputs under the usual out keys and the source outputs under ``("patched", out_key)``;
    - ``("patch", name, out_key)``: the outputs with module ``name`` patched (``name = "+".join(names)`` when
      ``jointly``);
    - ``("patch_effect", name)`` (or ``("patch_effect", name, target_name)`` for a TensorDict target):
      ``target(patched) - target(clean)`` per example, divided by ``target(source) - target(clean)`` when
      ``normalize`` (1 = the patch restores the source behaviour fully);
    - ``("patch_divergence", name)``: ``divergence(clean_outputs, patched_outputs)`` per example.

    What is swapped: the whole activation by default; ``units`` (indices along ``unit_dim``, default the last
    dim) and/or ``positions`` (indices along ``position_dim``, default dim 1 after the batch) restrict it; a
    ``patch_fn(clean_act, source_act) -> act`` replaces the rule altogether (e.g. mean-ablation, interpolation).
    Activations are seen with the batch flattened into dim 0, as the module sees them.

    ``sweep="positions"`` (or ``"units"``) patches each index along that dim on its own (one forward each,
    keeping the other selection) and stacks the results: ``("patch_effect", name)`` and
    ``("patch_divergence", name)`` get a trailing dim of that size; ``("patch", name, ...)`` is not written.
    """

    def __init__(
        self,
        paths: Path | Sequence[Path],
        target: Target | None = None,
        *,
        divergence: Divergence | None = None,
        units: Sequence[int] | torch.Tensor | None = None,
        positions: Sequence[int] | torch.Tensor | None = None,
        unit_dim: int = -1,
        position_dim: int = 1,
        patch_fn: PatchFn | None = None,
        jointly: bool = False,
        sweep: Literal["units", "positions"] | None = None,
        normalize: bool = False,
        source: str = "patched",
    ) -> None:
        if patch_fn is not None and (units is not None or positions is not None or sweep is not None):
            raise ValueError("pass either patch_fn=... or units=/positions=/sweep=..., not both")
        if sweep not in (None, "units", "positions"):
            raise ValueError(f"sweep must be None, 'units' or 'positions', not {sweep!r}")
        self.sweep = sweep
        self.paths, self.target, self.divergence = paths, target, divergence
        self.units, self.positions, self.unit_dim, self.position_dim = (
            units,
            positions,
            unit_dim,
            position_dim,
        )
        self.patch_fn, self.jointly, self.normalize, self.source = patch_fn, jointly, normalize, source
        self._check_effect()

    def _setup(self, hooked: Prepared, hooks: Hooks) -> None:
        self._modules = hooked.resolve(self.paths)

    def swap(
        self, clean: torch.Tensor, source: torch.Tensor, units: Any = None, positions: Any = None
    ) -> torch.Tensor:
        """The patched activation for ``clean`` and ``source`` activations of the same shape."""
        if self.patch_fn is not None:
            return self.patch_fn(clean, source)
        units = self.units if units is None else units
        positions = self.positions if positions is None else positions
        if units is None and positions is None:
            return source
        mask = torch.zeros_like(clean, dtype=torch.bool)
        index: list[Any] = [slice(None)] * clean.dim()
        for dim, idx in ((self.position_dim, positions), (self.unit_dim, units)):
            if idx is not None:
                d = dim % clean.dim()
                if d == 0:
                    raise ValueError("units/positions index activation dims after the batch dim, not dim 0")
                index[d] = torch.as_tensor(idx, dtype=torch.long, device=clean.device)
        sel = [i for i in index if isinstance(i, torch.Tensor)]
        if len(sel) == 2:  # units x positions: every combination
            dims = [i for i, v in enumerate(index) if isinstance(v, torch.Tensor)]
            index[dims[0]] = index[dims[0]].reshape(-1, 1)
        mask[tuple(index)] = True
        return torch.where(mask, source, clean)

    def _apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        out_keys = hooked.out_keys
        src_in = source_td(td, hooked.in_keys, self.source)
        names = [n for n, _ in self._modules]
        store: dict[str, torch.Tensor] = {}
        with Hooks() as hooks:
            for name, module in self._modules:
                hooks.forward(module, _record(store, name))
            source_out = hooked.model_forward(src_in).clone(False)
            src_acts = dict(store)
            store.clear()
            clean_out = hooked.model_forward(td).clone(False)
        missing = [n for n in names if n not in src_acts]
        if missing:
            raise RuntimeError(
                f"modules {missing} never ran during the forward, so there is nothing to patch"
            )
        for k in out_keys:
            td.set(_key(self.source, k), source_out.get(k))
        groups = [names] if self.jointly else [[n] for n in names]
        for group in groups:
            gname = "+".join(group)
            if self.sweep is None:
                patched_out = self._patched_run(hooked, td, group, src_acts, {})
                for k in out_keys:
                    td.set(_key("patch", gname, k), patched_out.get(k))
                self._write_effects(td, gname, clean_out, patched_out, source_out)
                continue
            dim = self.position_dim if self.sweep == "positions" else self.unit_dim
            sizes = {src_acts[n].shape[dim % src_acts[n].dim()] for n in group}
            if len(sizes) != 1:
                raise ValueError(
                    f"sweep={self.sweep!r} needs the same size along dim {dim} in {group}: {sizes}"
                )
            per_index: dict[tuple, list[torch.Tensor]] = {}
            for i in range(sizes.pop()):
                sel = {"positions" if self.sweep == "positions" else "units": [i]}
                patched_out = self._patched_run(hooked, td, group, src_acts, sel)
                for suffix, v in self._effects(clean_out, patched_out, source_out).items():
                    per_index.setdefault(suffix, []).append(v)
            for (kind, *rest), values in per_index.items():
                td.set(_key(kind, gname, *rest), torch.stack(values, -1))
        return td

    def _patched_run(
        self, hooked: Prepared, td: TensorDictBase, group: list[str], src_acts: dict, sel: dict
    ) -> TensorDictBase:
        with Hooks() as hooks:
            for name, module in self._modules:
                if name in group:
                    src = src_acts[name]
                    hooks.forward(module, _set(lambda act, src=src: self.swap(act, src, **sel), name))
            patched_in = td.exclude(self.source, *[_key(k) for k in hooked.out_keys]).copy()
            return hooked.model_forward(patched_in)


# -- path patching ---------------------------------------------------------------------------------------------------
class PathPatching(_Effects, Method):
    """The effect of ``sender`` on the outputs that flows *only* through ``receiver``'s output.

    Three runs after the source run: (1) the clean run, caching the ``freeze`` modules; (2) a run on the clean
    inputs with ``sender``'s output taken from the source run and every ``freeze`` module held at its clean
    value, recording ``receiver``'s output; (3) the clean run with ``receiver``'s output set to that recording.
    Paths from ``sender`` that avoid ``receiver`` keep their clean values, and so do paths through the frozen
    modules (the other branches in between).

    Reads ``k`` and ``("patched", k)``; writes the clean outputs, the source outputs at ``("patched", out_key)``,
    ``("patch", name, out_key)``, ``("patch_effect", name[, target])`` and ``("patch_divergence", name)`` with
    ``name = "sender->receiver"``, as ``ActivationPatching`` does. ``patch_fn(clean, source)`` as there, for the
    sender.
    """

    def __init__(
        self,
        sender: Path,
        receiver: Path,
        target: Target | None = None,
        *,
        freeze: Path | Sequence[Path] = (),
        divergence: Divergence | None = None,
        patch_fn: PatchFn | None = None,
        normalize: bool = False,
        source: str = "patched",
    ) -> None:
        self.sender, self.receiver, self.freeze = sender, receiver, freeze
        self.target, self.divergence, self.patch_fn = target, divergence, patch_fn
        self.normalize, self.source = normalize, source
        self._check_effect()

    def _setup(self, hooked: Prepared, hooks: Hooks) -> None:
        self._sender = hooked.resolve_one(self.sender)
        self._receiver = hooked.resolve_one(self.receiver)
        frozen = (
            hooked.resolve(self.freeze) if (isinstance(self.freeze, str | nn.Module) or self.freeze) else []
        )
        bad = [n for n, m in frozen if m is self._sender[1] or m is self._receiver[1]]
        if bad:
            raise ValueError(
                f"freeze={bad} includes the sender or the receiver; freeze only the other modules"
            )
        self._frozen = frozen

    def _apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        out_keys = hooked.out_keys
        (s_name, s_mod), (r_name, r_mod) = self._sender, self._receiver
        store: dict[str, torch.Tensor] = {}
        with Hooks() as hooks:
            hooks.forward(s_mod, _record(store, s_name))
            source_out = hooked.model_forward(source_td(td, hooked.in_keys, self.source)).clone(False)
        if s_name not in store:
            raise RuntimeError(f"sender {s_name!r} never ran during the forward")
        src = store.pop(s_name)
        clean_cache: dict[str, torch.Tensor] = {}
        with Hooks() as hooks:
            for n, m in self._frozen:
                hooks.forward(m, _record(clean_cache, n))
            clean_out = hooked.model_forward(td).clone(False)
        fresh = lambda: td.exclude(self.source, *[_key(k) for k in out_keys]).copy()
        with Hooks() as hooks:
            swap = self.patch_fn or (lambda clean, source: source)
            hooks.forward(s_mod, _set(lambda act: swap(act, src), s_name))
            for n, m in self._frozen:
                hooks.forward(m, _set(lambda act, v=clean_cache[n]: v, n))
            hooks.forward(r_mod, _record(store, r_name))
            hooked.model_forward(fresh())
        if r_name not in store:
            raise RuntimeError(f"receiver {r_name!r} never ran during the forward")
        received = store.pop(r_name)
        with Hooks() as hooks:
            hooks.forward(r_mod, _set(lambda act: received, r_name))
            patched_out = hooked.model_forward(fresh())
        name = f"{s_name}->{r_name}"
        for k in out_keys:
            td.set(_key(self.source, k), source_out.get(k))
            td.set(_key("patch", name, k), patched_out.get(k))
        self._write_effects(td, name, clean_out, patched_out, source_out)
        return td
