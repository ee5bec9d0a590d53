"""What every gradient attribution shares: options, the products it writes, and one gradient engine.

Options (``GradientOptions``, set once on every gradient method):

- ``target``: what is explained (see ``rlhook.targets``); a TensorDict target gives one map per entry;
  ``Aggregate(target)``, one value for the whole batch, where the method's ``aggregate`` flag is set.
- ``inputs``: the input keys attributed to (default: the hooked module's floating ``in_keys``).
- ``layers``: module paths whose *outputs* are attributed to as well (layer attribution).
- ``layer_input``: attribute to each layer's first positional *input* instead of its output (captum's
  ``attribute_to_layer_input``); products keep the layer's name.
- ``chunk_size``: rows (samples x examples) per forward; bounds memory, results equal unchunked ones.
- ``batched``: one batched backward for all targets (``is_grads_batched``) instead of one per target;
  ``None`` picks it on CUDA.
- ``key``: where products go, ``"attr"`` by default; it renames every product (the delta goes to
  ``f"{key}_delta"``). ``set_keys(attr=..., delta=...)`` renames them one by one.

Products (declared in ``GradientMethod.keys``): ``(key, input)`` for a single target, ``(key, name, input)``
for a TensorDict target with entry ``name``; layer paths take the place of input keys. Methods with a
completeness or conservation gap also write ``attr_delta`` (``("attr_delta", name)`` per target).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook import elements
from rlhook.attribution.aggregate import check_aggregate, whole_batches
from rlhook.hooks import Hooks
from rlhook.keys import get_key
from rlhook.methods import Method, Prepared, check_count
from rlhook.paths import Path
from rlhook.proxy import Proxy
from rlhook.run import Run, Site
from rlhook.targets import SINGLE, Target, evaluate, is_aggregate

__all__ = [
    "GradientMethod",
    "GradientOptions",
    "Points",
    "baselines",
    "gradients",
    "flat_view",
    "layer_outputs",
    "save_layer",
    "set_layer",
    "target_forward",
]

#: makes the points for a chunk: ``(key, step index per row, example index per row) -> values``
Points = Callable[[NestedKey, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GradientOptions:
    target: Target | None = None
    inputs: Sequence[NestedKey] | None = None
    layers: Path | Sequence[Path] | None = None
    layer_input: bool = False
    chunk_size: int | None = None
    batched: bool | None = None
    key: str = "attr"


class GradientMethod(Method):
    """Base of gradient attributions; subclasses add their own options and implement ``attribute``.

    ``attribute(hooked, flat, keys)`` returns ``{target name: {input key or layer name: map (B, ...)}}`` for a
    TensorDict ``flat`` with one batch dim; a gap per example may be put in ``hooked.state.deltas[target]``.
    """

    keys = {"attr": "attr", "delta": "attr_delta"}
    #: whether ``attribute`` runs with gradients on (perturbation methods turn it off)
    needs_grad: bool = True
    #: whether the method explains an ``Aggregate`` target (one value for the whole batch)
    aggregate: bool = False

    def __init__(self, target: Target | None = None, **options: object) -> None:
        unknown = sorted(set(options) - set(GradientOptions.__dataclass_fields__))
        if unknown:
            hint = (
                "; baselines go into the TensorDict, as ('baseline', k) next to each input k"
                if "baselines" in unknown
                else ""
            )
            raise TypeError(
                f"{type(self).__name__} got unknown option(s) {unknown}; the shared options are "
                f"{sorted(GradientOptions.__dataclass_fields__)}{hint}"
            )
        self.options = GradientOptions(target=target, **options)
        if self.options.target is None:
            raise ValueError(
                f"{type(self).__name__} needs target=... (an output key, a callable or a preset)"
            )
        check_count("chunk_size", self.options.chunk_size, optional=True)
        check_aggregate(self)
        if self.options.key != "attr":
            self.set_keys(attr=self.options.key, delta=f"{self.options.key}_delta")

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        opts = self.options
        check_aggregate(self)
        hooked.state.layers = hooked.resolve(opts.layers) if opts.layers is not None else []
        hooked.state.layer_input = opts.layer_input

    def input_keys(self, hooked: Prepared, td: TensorDictBase) -> list[NestedKey]:
        """The attributed input keys: the option, or the floating inputs of the hooked module."""
        if self.options.inputs is not None:
            keys = list(self.options.inputs)
            for k in keys:
                get_key(td, k)
            return keys
        keys = [k for k in hooked.in_keys if torch.is_floating_point(get_key(td, k))]
        if not keys and not hooked.state.layers:
            raise ValueError(
                f"no floating input among {hooked.in_keys} to attribute to: integer inputs (token ids, board "
                "indices) have no gradient; attribute to the output of the module that embeds them instead, "
                "layers=['<embedding path>'] (IG also needs ('baseline', k) ids, e.g. a padding token)"
            )
        return keys

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        keys = self.input_keys(hooked, td)
        flat = flat_view(td)
        hooked.state.deltas = {}
        with torch.set_grad_enabled(self.needs_grad):
            products = self.attribute(hooked, flat, keys)
        self.write(td, products, hooked.state.deltas)
        return td

    def write(
        self,
        td: TensorDictBase,
        products: dict[str | None, dict[NestedKey, torch.Tensor]],
        deltas: dict[str | None, torch.Tensor] | None = None,
    ) -> None:
        """Write ``{target: {input or layer: map (flat batch)}}`` and per-example gaps in ``td``'s batch shape:
        the one place gradient methods put products into the TensorDict."""
        batch = td.batch_size
        for name, maps in products.items():
            for k, value in maps.items():
                value = value.reshape(*batch, *value.shape[1:]) if len(batch) != 1 else value
                td.set(self.key("attr", None if name is SINGLE else name, k), value.detach())
        for name, d in (deltas or {}).items():
            d = d.reshape(*batch, *d.shape[1:])  # one gap per example, or per example and noisy copy
            td.set(self.key("delta", None if name is SINGLE else name), d.detach())

    def attribute(
        self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]
    ) -> dict[str | None, dict[NestedKey, torch.Tensor]]:
        raise NotImplementedError

    def input_gradients(
        self,
        hooked: Prepared,
        flat: TensorDictBase,
        keys: list[NestedKey],
        target: Target | None = None,
        values: dict[str | None, torch.Tensor] | None = None,
    ) -> dict[str | None, dict[NestedKey, torch.Tensor]]:
        """Gradients of every target (``target``, default the option) at the inputs themselves (one point),
        w.r.t. ``keys`` and the layers. A ``values`` dict is filled with each target's value per example
        ``(B,)`` from the same forward (detached), so a method that needs them runs no second forward."""
        o = self.options
        sums, _ = gradients(
            hooked,
            flat,
            o.target if target is None else target,
            keys,
            1,
            lambda k, step, ex: flat.get(k)[ex],
            torch.ones(1),
            layers=hooked.state.layers,
            chunk_size=o.chunk_size,
            batched=o.batched,
            values=values,
        )
        return sums


def flat_view(td: TensorDictBase) -> TensorDictBase:
    """``td`` with its batch dimensions flattened to one (a leading one added when it has none)."""
    if td.batch_dims == 1:
        return td
    return td.reshape(-1) if td.batch_dims > 1 else td.unsqueeze(0)


def save_layer(run: Run, hooked: Prepared, site: Site) -> Proxy:
    """Save the layer's output, or its first input when the method attributes to layer inputs."""
    return run.save_input(site) if getattr(hooked.state, "layer_input", False) else run.save(site)


def set_layer(run: Run, hooked: Prepared, site: Site, value: Callable) -> None:
    """Replace the layer's output, or its first input when the method attributes to layer inputs."""
    (run.set_input if getattr(hooked.state, "layer_input", False) else run.set)(site, value)


def target_sites(run: Run, target: Target | None) -> dict[str, Proxy]:
    """Declare saves of the module outputs a target reads (``Neuron``) in ``run``."""
    return {p: run.save(p) for p in getattr(target, "neuron_paths", ())}


def put_target_sites(run: Run, out: TensorDictBase, proxies: dict[str, Proxy]) -> TensorDictBase:
    """Write the saved module outputs into ``out`` at ``("neuron", path)`` (returned)."""
    for path, value in run.collect(proxies).items():
        out.set(("neuron", path), value)
    return out


def target_forward(hooked: Prepared, td: TensorDictBase, target: Target | None) -> TensorDictBase:
    """The model's outputs on ``td``, with the module outputs a target reads (``Neuron``) at
    ``("neuron", path)``; a plain forward when it reads none."""
    if not getattr(target, "neuron_paths", ()):
        return hooked.model_forward(td)
    with hooked.run(td) as run:
        proxies = target_sites(run, target)
    return put_target_sites(run, run.output, proxies)


def layer_outputs(hooked: Prepared, flat: TensorDictBase, layers: Sequence[Site]) -> dict[str, torch.Tensor]:
    """Outputs (or elements; the inputs with ``layer_input``) of the ``layers`` sites on ``flat``, without
    gradients, shape ``(B, ...)``."""
    with torch.no_grad(), hooked.run(flat.clone(False)) as run:
        proxies = {name: save_layer(run, hooked, (name, module)) for name, module in layers}
    return run.collect(proxies)


def _split_rows(n_rows: int, chunk_size: int | None) -> list[tuple[int, int]]:
    size = n_rows if chunk_size is None else max(1, chunk_size)
    return [(s, min(s + size, n_rows)) for s in range(0, n_rows, size)]


def gradients(
    hooked: Prepared,
    flat: TensorDictBase,
    target: Target,
    keys: Sequence[NestedKey],
    n_points: int,
    points: Points,
    weights: torch.Tensor,
    *,
    layers: Sequence[Site] = (),
    chunk_size: int | None = None,
    batched: bool | None = None,
    square: bool = False,
    patch_layers: bool = False,
    values: dict[str | None, torch.Tensor] | None = None,
) -> tuple[
    dict[str | None, dict[NestedKey, torch.Tensor]], dict[str | None, dict[NestedKey, torch.Tensor]] | None
]:
    """Weighted sums of gradients over ``n_points`` points per example, one shared forward per chunk.

    For every target name ``t`` and attributed input ``k`` (a key, or a layer name for ``layers``) returns
    ``sum_s weights[s] * d target_t / d k (point_s)``, shape ``(B, *k.shape[1:])``, and, with ``square``, the
    same sum of squared gradients. Rows are (point, example) pairs, ``chunk_size`` rows per forward; all
    targets share that forward and take one backward each (or one batched backward). With ``patch_layers``
    each layer's output is *replaced* by ``points(layer, step, ex)`` (the layer taken as the input, as in
    layer integrated gradients); otherwise gradients are taken at the layer's own output. A ``values`` dict
    is filled with each target's value per row, detached, shape ``(n_points * B,)`` in row order (point-major).
    """
    n_ex = flat.batch_size[0]
    n_rows = n_points * n_ex
    device = flat.device or next(
        (t.device for t in flat.values(True, True) if isinstance(t, torch.Tensor)), None
    )
    batched = (device is not None and device.type == "cuda") if batched is None else batched
    weights = weights.to(device) if device is not None else weights
    sums: dict[str | None, dict[NestedKey, torch.Tensor]] = {}
    squares: dict[str | None, dict[NestedKey, torch.Tensor]] | None = {} if square else None
    parts: dict[str | None, list[torch.Tensor]] = {}
    aggregate = is_aggregate(target)
    spans = whole_batches(n_ex, n_rows, chunk_size) if aggregate else _split_rows(n_rows, chunk_size)
    for start, stop in spans:  # an Aggregate target: one point of the path (the whole batch) per forward
        rows = torch.arange(start, stop, device=device)
        step, ex = rows // n_ex, rows % n_ex
        chunk = flat[ex]
        leaves = []
        for k in keys:
            leaf = points(k, step, ex).detach().requires_grad_(True)
            chunk.set(k, leaf)
            leaves.append(leaf)
        with hooked.run(chunk) as run:
            sites = target_sites(run, target)
            saved = {}
            for name, module in layers:
                if patch_layers:  # the layer taken as the input: its output replaced by the path's points
                    set_layer(run, hooked, (name, module), _layer_points(points, name, step, ex))
                saved[name] = save_layer(run, hooked, (name, module))
        acts = run.collect(saved)
        for name, act in list(acts.items()):
            if (
                not isinstance(act, torch.Tensor) and name in hooked.optional
            ):  # a structure a pattern selected
                del acts[name]
            elif not isinstance(act, torch.Tensor):
                raise TypeError(
                    f"layer {name!r} gives a {type(act).__name__}; layer attribution needs a tensor: name an "
                    f"element of the output, e.g. '{elements.first_of(name)}'"
                )
        scores = evaluate(target, put_target_sites(run, run.output, sites), batch_dims=1)
        if values is not None:
            for tname, score in scores.items():
                parts.setdefault(tname, []).append(score.detach())
        wrt = leaves + list(acts.values())
        names = list(keys) + list(acts)
        grads = _vjps(scores, wrt, batched)
        aligned = start % n_ex == 0 and (stop - start) % n_ex == 0  # whole points: a weighted sum is a GEMV
        w = weights[start // n_ex : stop // n_ex] if aligned else weights[step]
        for tname, gs in grads.items():
            acc = sums.setdefault(tname, {})
            acc2 = squares.setdefault(tname, {}) if squares is not None else None
            for i, (k, g) in enumerate(zip(names, gs)):
                g = (torch.zeros_like(wrt[i]) if g is None else g).detach()
                _accumulate(acc, k, ex, g, w, n_ex, aligned)
                if acc2 is not None:
                    _accumulate(acc2, k, ex, g * g, w, n_ex, aligned)
    if values is not None:
        values.update({tname: torch.cat([p.reshape(-1) for p in ps]) for tname, ps in parts.items()})
    return sums, squares


def _layer_points(points: Points, name: str, step: torch.Tensor, ex: torch.Tensor) -> Callable:
    return lambda output: points(name, step, ex).detach().to(output.dtype).requires_grad_(True)


def _accumulate(
    acc: dict, k: NestedKey, ex: torch.Tensor, g: torch.Tensor, w: torch.Tensor, n_ex: int, aligned: bool
) -> None:
    """``acc[k][e] += sum over rows r with ex[r] == e of w[r] * g[r]`` (``w`` per point when ``aligned``)."""
    if aligned:
        value = (w.to(g.dtype) @ g.reshape(w.shape[0], -1)).reshape(n_ex, *g.shape[1:])
        acc[k] = acc[k] + value if k in acc else value
        return
    if k not in acc:
        acc[k] = g.new_zeros((n_ex, *g.shape[1:]))
    acc[k].index_add_(0, ex, g * w.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1))))


def _vjps(
    scores: dict[str | None, torch.Tensor], wrt: list[torch.Tensor], batched: bool
) -> dict[str | None, tuple[torch.Tensor | None, ...]]:
    """Gradients of each per-example score (summed over rows) w.r.t. ``wrt``: one backward per target, or one
    batched backward for all of them."""
    names = list(scores)
    for n in names:
        if not scores[n].requires_grad:
            raise RuntimeError(
                f"{'the target' if n is SINGLE else f'target {n!r}'} does not depend on the attributed inputs "
                "(no gradient flows to it); "
                "check the target and inputs=..."
            )
    if batched and len(names) > 1:
        stacked = torch.stack([scores[n] for n in names])  # (K, rows), or (K,) for Aggregate targets
        eye = torch.eye(len(names), dtype=stacked.dtype, device=stacked.device)
        grad_out = eye if stacked.dim() == 1 else eye[:, :, None].expand(-1, -1, stacked.shape[1])
        gs = torch.autograd.grad(
            stacked, wrt, grad_outputs=grad_out, is_grads_batched=True, allow_unused=True
        )
        return {n: tuple(None if g is None else g[i] for g in gs) for i, n in enumerate(names)}
    result = {}
    for i, n in enumerate(names):
        result[n] = torch.autograd.grad(
            scores[n].sum(), wrt, retain_graph=i < len(names) - 1, allow_unused=True
        )
    return result


def baselines(td: TensorDictBase, keys: Sequence[NestedKey]) -> dict[NestedKey, torch.Tensor]:
    """``("baseline", k)`` for each input ``k`` (zeros when absent), checked against the input's shape/device."""
    result = {}
    for k in keys:
        x = td.get(k)
        parts = (k,) if isinstance(k, str) else tuple(k)
        b = td.get(("baseline", *parts), None)
        if b is None:
            result[k] = torch.zeros_like(x)
            continue
        if b.device != x.device:
            raise ValueError(f"baseline for {k!r} is on {b.device} but the input is on {x.device}")
        try:
            shape = torch.broadcast_shapes(b.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(
                f"baseline for {k!r} has shape {tuple(b.shape)}, which does not broadcast to the input's shape "
                f"{tuple(x.shape)}"
            )
        result[k] = b.expand_as(x).to(x.dtype)
    return result
