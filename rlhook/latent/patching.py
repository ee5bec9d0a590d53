"""Activation patching: swap activations of a *source* run into a *clean* run, module by module.

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

from rlhook import elements
from rlhook.hooks import Hooks
from rlhook.keys import clone_given, keep_given, source_td
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.targets import Target, evaluate

__all__ = ["ActivationPatching", "PatchEffects", "Divergence", "PatchFn", "checked_patch"]

PatchFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Divergence = Callable[[TensorDictBase, TensorDictBase], torch.Tensor]


def checked_patch(value: Callable[[torch.Tensor], torch.Tensor], name: str) -> Callable:
    """``value`` as a ``Run.set`` function that refuses a patch of another shape than the activation."""

    def patch(output: torch.Tensor) -> torch.Tensor:
        new = value(output)
        if new.shape != output.shape:
            raise ValueError(
                f"patch of {name!r} has shape {tuple(new.shape)}, but the activation has shape {tuple(output.shape)}"
            )
        return new

    return patch


class PatchEffects(Method):
    """What patching methods share: the effect measures and their declared product keys.

    Keys (roles): ``source`` (the source inputs, ``"patched"``), ``patch`` (patched outputs), ``effect``
    (``"patch_effect"``), ``divergence`` (``"patch_divergence"``); the ``source=`` option renames the first.
    """

    keys = {"source": "patched", "patch": "patch", "effect": "patch_effect", "divergence": "patch_divergence"}

    target: Target | None
    divergence: Divergence | None
    normalize: bool

    def check_effect(self) -> None:
        if self.target is None and self.divergence is None:
            raise ValueError(
                "patching needs target=... (effect = target(patched) - target(clean)) and/or divergence=... "
                "(e.g. CategoricalKL('logits'))"
            )
        if self.normalize and self.target is None:
            raise ValueError("normalize=True rescales target effects; it needs target=...")

    def effects(
        self, clean: TensorDictBase, patched: TensorDictBase, source: TensorDictBase
    ) -> dict[tuple, torch.Tensor]:
        """``{(role, [target]): per-example tensor}`` for the ``effect`` and ``divergence`` roles."""
        out: dict[tuple, torch.Tensor] = {}
        if self.target is not None:
            t_clean, t_patch = evaluate(self.target, clean), evaluate(self.target, patched)
            t_src = evaluate(self.target, source) if self.normalize else None
            for tname, v in t_patch.items():
                effect = v - t_clean[tname]
                if t_src is not None:
                    effect = effect / (t_src[tname] - t_clean[tname])
                out[("effect",) if tname is None else ("effect", tname)] = effect.detach()
        if self.divergence is not None:
            out[("divergence",)] = self.divergence(clean, patched).detach()
        return out

    def write_effects(
        self,
        td: TensorDictBase,
        name: str,
        clean: TensorDictBase,
        patched: TensorDictBase,
        source: TensorDictBase,
    ) -> None:
        for (kind, *rest), value in self.effects(clean, patched, source).items():
            td.set(self.key(kind, name, *rest), value)

    def fresh(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        """The clean inputs of ``td`` without the source inputs and without earlier outputs."""
        return keep_given(td, td.exclude(self.key("source"), *hooked.out_keys).copy())

    def write_outputs(
        self, td: TensorDictBase, role: str, name: str | None, out: TensorDictBase, keys
    ) -> None:
        """Copy the output ``keys`` of ``out`` to ``(role key, [name], k)`` in ``td``."""
        for k in keys:
            value = out.get(k)
            td.set(self.key(role, name, k), value.detach() if isinstance(value, torch.Tensor) else value)


# -- activation patching ---------------------------------------------------------------------------------------------
class ActivationPatching(PatchEffects):
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
        self.patch_fn, self.jointly, self.normalize = patch_fn, jointly, normalize
        self.set_keys(source=source)
        self.check_effect()

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        hooked.state.modules = hooked.resolve(self.paths)

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

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        out_keys, sites = hooked.out_keys, hooked.state.modules
        with hooked.run(source_td(td, hooked.in_keys, self.key("source"))) as run:
            saved = {name: run.save((name, module)) for name, module in sites}
        source_out = clone_given(run.output)
        src_acts = run.collect(saved)
        clean_out = clone_given(hooked.model_forward(td))
        self.write_outputs(td, "source", None, source_out, out_keys)
        names = [n for n, _ in sites if n in src_acts]  # modules a pattern selected that never ran: reported
        groups = [names] if self.jointly else [[n] for n in names]
        for group in groups:
            gname = "+".join(group)
            if self.sweep is None:
                patched_out = self._patched_run(hooked, td, group, src_acts, {})
                self.write_outputs(td, "patch", gname, patched_out, out_keys)
                self.write_effects(td, gname, clean_out, patched_out, source_out)
                continue
            dim = self.position_dim if self.sweep == "positions" else self.unit_dim
            for n in group:
                _need_tensor(src_acts[n], n, f"sweep={self.sweep!r}")
            sizes = {src_acts[n].shape[dim % src_acts[n].dim()] for n in group}
            if len(sizes) != 1:
                raise ValueError(
                    f"sweep={self.sweep!r} needs the same size along dim {dim} in {group}: {sizes}"
                )
            per_index: dict[tuple, list[torch.Tensor]] = {}
            for i in range(sizes.pop()):
                sel = {"positions" if self.sweep == "positions" else "units": [i]}
                patched_out = self._patched_run(hooked, td, group, src_acts, sel)
                for suffix, v in self.effects(clean_out, patched_out, source_out).items():
                    per_index.setdefault(suffix, []).append(v)
            for (kind, *rest), values in per_index.items():
                td.set(self.key(kind, gname, *rest), torch.stack(values, -1))
        return td

    def _patched_run(
        self, hooked: Prepared, td: TensorDictBase, group: list[str], src_acts: dict, sel: dict
    ) -> TensorDictBase:
        with hooked.run(self.fresh(hooked, td)) as run:
            for name, module in hooked.state.modules:
                if name in group:
                    src = src_acts[name]
                    if not isinstance(src, torch.Tensor) and self.patch_fn is None and not sel:
                        if self.units is None and self.positions is None:  # a structure: swapped whole
                            run.set((name, module), src)
                            continue
                    _need_tensor(src, name, "units=/positions=/patch_fn=")
                    run.set(
                        (name, module), checked_patch(lambda act, src=src: self.swap(act, src, **sel), name)
                    )
        return run.output


def _need_tensor(value: Any, name: str, what: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{what} patches part of a tensor, but {name!r} gives a {type(value).__name__}: name an element of "
            f"it, e.g. '{elements.first_of(name)}'"
        )
