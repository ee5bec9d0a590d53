"""Perturbation attribution: FeatureAblation (feature masks) and Occlusion (sliding windows).

Both replace parts of the inputs by ``("baseline", k)`` (zeros if absent) and record how the target
changes. Perturbations x examples form rows that are batched into forwards of ``chunk_size`` rows; results
are identical for any chunk size. ``perturbation_scores`` is the shared engine (also used by
``rlhook.attribution.perturbation``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.aggregate import whole_batches
from rlhook.attribution.base import GradientMethod, baselines, target_forward
from rlhook.attribution.features import FeatureMask, as_dict, feature_positions, spread
from rlhook.methods import Prepared
from rlhook.targets import Target, evaluate, is_aggregate

__all__ = ["FeatureAblation", "Occlusion", "PerturbationMethod", "perturbation_scores"]

#: ``perturb(rows, p, ex)`` edits the inputs of ``rows`` (a TensorDict of R rows) for perturbation indices
#: ``p`` and example indices ``ex`` (both shape ``(R,)``)
Perturb = Callable[[TensorDictBase, torch.Tensor, torch.Tensor], None]
#: ``score(out, ex) -> {target name: (R,)}`` for the outputs of perturbed rows
Score = Callable[[TensorDictBase, torch.Tensor], dict]


def drops_from(hooked: Prepared, flat: TensorDictBase, target: Target | None) -> Score:
    """The score of perturbed rows, ``f(x) - f(x perturbed)`` per target, with ``f(x)`` from one unperturbed
    forward without gradients (one value of the whole batch for an ``Aggregate`` target)."""
    with torch.no_grad():
        f_x = evaluate(target, target_forward(hooked, flat.clone(False), target), 1, floating=False)

    def score(out: TensorDictBase, ex: torch.Tensor) -> dict:
        values = evaluate(target, out, 1, floating=False).items()
        return {t: (f_x[t] if f_x[t].dim() == 0 else f_x[t][ex]) - v for t, v in values}

    return score


def perturbation_scores(
    hooked: Prepared,
    flat: TensorDictBase,
    n_perturb: int,
    perturb: Perturb,
    score: Score,
    chunk_size: int | None = None,
    target: Target | None = None,
) -> dict[str | None, torch.Tensor]:
    """``{target name: (n_perturb, B)}``: ``score`` of every perturbation of every example. Rows (perturbation
    ``p``, example ``ex``) are ordered ``p * B + ex`` and run ``chunk_size`` at a time, without gradients.
    ``target``: the target ``score`` evaluates (its ``Neuron`` module outputs are saved in each forward). An
    ``Aggregate`` target runs one perturbation of the whole batch per forward; its one score per perturbation
    is repeated over the batch."""
    n_ex = flat.batch_size[0]
    n_rows = n_perturb * n_ex
    size = n_rows if chunk_size is None else chunk_size
    spans = (
        whole_batches(n_ex, n_rows, chunk_size)
        if is_aggregate(target)
        else [(s, min(s + size, n_rows)) for s in range(0, n_rows, max(size, 1))]
    )
    result: dict[str | None, torch.Tensor] = {}
    device = next((t.device for t in flat.values(True, True) if isinstance(t, torch.Tensor)), None)
    with torch.no_grad():
        for start, stop in spans:
            rows_i = torch.arange(start, stop, device=device)
            p, ex = rows_i // n_ex, rows_i % n_ex
            rows = flat[ex]
            perturb(rows, p, ex)
            for t, v in score(target_forward(hooked, rows, target), ex).items():
                if t not in result:
                    result[t] = v.new_zeros(n_rows)
                result[t][rows_i] = v
    return {t: v.reshape(n_perturb, n_ex) for t, v in result.items()}


class PerturbationMethod(GradientMethod):
    """Base of the perturbation methods: the shared options (target, inputs, chunk_size = rows per forward,
    key), no gradients. ``layers`` and ``batched`` do not apply."""

    aggregate = True

    needs_grad = False

    def __init__(self, target: Target | None = None, **options: object) -> None:
        super().__init__(target, **options)
        if self.options.layers is not None:
            raise ValueError(f"{type(self).__name__} perturbs inputs; layers=... is not supported")

    def _differences(
        self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey], n_perturb: int, mask: Callable
    ) -> dict[str | None, torch.Tensor]:
        """``f(x) - f(x with mask(k, p, ex) of input k replaced by its baseline)``, shape ``(P, B)``."""
        base = baselines(flat, keys)
        xs = {k: flat.get(k) for k in keys}
        score = drops_from(hooked, flat, self.options.target)

        def perturb(rows: TensorDictBase, p: torch.Tensor, ex: torch.Tensor) -> None:
            for k in keys:
                m = mask(k, p, ex)
                if m is not None:  # a where, not a blend: boolean and integer inputs are ablated too
                    rows.set(k, torch.where(m.bool(), base[k][ex], xs[k][ex]))

        return perturbation_scores(
            hooked, flat, n_perturb, perturb, score, self.options.chunk_size, self.options.target
        )


class FeatureAblation(PerturbationMethod):
    """Replace each feature (a group of input elements sharing an id in ``feature_mask``) by its baseline and
    record ``f(x) - f(x ablated)`` on every element of the feature.

    Feature ids are shared across inputs: one id ablates its elements in every input at once. Without a
    mask every element of every input is its own feature.

    Reads the attributed inputs, ``("baseline", k)`` and ``("feature_mask", k)`` (a mask per example: integer
    ids shaped like ``k``; it follows the batch through slicing and ``NoiseTunnel``, and wins over the option);
    writes ``("attr", k)`` (or ``("attr", name, k)``), same shape as ``k``.

    Args:
        feature_mask: integer ids, a tensor or ``{key: tensor}``, shaped like one example of the input
            (``k.shape[batch:]``, broadcastable) or like the flattened batch.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        feature_mask: FeatureMask | None = None,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        self.feature_mask = feature_mask

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        ids, position = feature_positions(flat, keys, self.feature_mask)  # perturbation index per element

        def mask(k: NestedKey, p: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
            pos = position[k][ex]
            return pos == p.reshape(-1, *([1] * (pos.dim() - 1)))

        diffs = self._differences(hooked, flat, keys, len(ids), mask)
        return {t: spread(d.t(), position) for t, d in diffs.items()}  # d: (P, B)


class Occlusion(PerturbationMethod):
    """Slide a window over each input, replace the window by the baseline, and give every element the mean of
    ``f(x) - f(x occluded)`` over the windows that cover it (Zeiler and Fergus, 2014).

    Windows start at multiples of the stride; the last start is ``ceil((D - w) / s) * s``, clipped at the edge
    (as in captum). Each input is occluded on its own.

    Reads the attributed inputs and ``("baseline", k)``; writes ``("attr", k)`` (or ``("attr", name, k)``),
    same shape as ``k``.

    Args:
        window: window shape over one example's dims (``k.shape[batch:]``), or ``{key: shape}``.
        strides: an int, a tuple per dim, or ``{key: ...}``; default 1. A stride may not exceed the window.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        window: Sequence[int] | Mapping[NestedKey, Sequence[int]],
        strides: int | Sequence[int] | Mapping[NestedKey, int | Sequence[int]] = 1,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        self.window, self.strides = window, strides

    def _grid(self, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        windows = as_dict(self.window, keys, "window")
        strides = as_dict(self.strides, keys, "strides")
        grid = {}
        for k in keys:
            shape = tuple(flat.get(k).shape[1:])
            w = tuple(windows[k])
            s = strides[k]
            s = (s,) * len(shape) if isinstance(s, int) else tuple(s)
            if len(w) != len(shape) or len(s) != len(shape):
                raise ValueError(
                    f"window {w} and strides {s} for {k!r} need one entry per dim of one example {shape}"
                )
            if any(wi > di or wi < 1 for wi, di in zip(w, shape)):
                raise ValueError(f"window {w} for {k!r} must be >= 1 and fit in one example {shape}")
            if any(si > wi and di > wi for si, wi, di in zip(s, w, shape)) or any(si < 1 for si in s):
                raise ValueError(
                    f"strides {s} for {k!r} must be in [1, window {w}] so windows cover every element"
                )
            counts = tuple(math.ceil((di - wi) / si) + 1 for di, wi, si in zip(shape, w, s))
            grid[k] = (shape, w, s, counts)
        return grid

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        grid = self._grid(flat, keys)
        offsets, total = {}, 0
        for k in keys:
            offsets[k] = total
            total += math.prod(grid[k][3])
        device = flat.get(keys[0]).device

        def mask(k: NestedKey, p: torch.Tensor, ex: torch.Tensor | None = None) -> torch.Tensor | None:
            shape, w, s, counts = grid[k]
            local = p - offsets[k]
            inside = (local >= 0) & (local < math.prod(counts))
            if ex is not None and not inside.any():
                return None
            m = inside.reshape(-1, *([1] * len(shape)))
            rest = local.clamp(min=0)
            for d, (di, wi, si, ci) in enumerate(zip(shape, w, s, counts)):
                start = (rest % ci) * si  # captum's order: the first dim varies fastest
                rest = rest // ci
                idx = torch.arange(di, device=device)
                in_d = (idx >= start[:, None]) & (idx < start[:, None] + wi)
                view = [1] * len(shape)
                view[d] = di
                m = m & in_d.reshape(-1, *view)
            return m

        diffs = self._differences(hooked, flat, keys, total, mask)
        result: dict = {}
        chunk = 256
        for k in keys:
            shape, _, _, counts = grid[k]
            n_k = math.prod(counts)
            cover = torch.zeros(shape, device=device)
            acc = {t: None for t in diffs}
            for a in range(0, n_k, chunk):
                p = torch.arange(a, min(a + chunk, n_k), device=device) + offsets[k]
                m = mask(k, p).to(flat.get(k).dtype)  # (Pc, *shape)
                cover = cover + m.sum(0)
                for t, d in diffs.items():
                    part = torch.einsum("pb,p...->b...", d[p], m)
                    acc[t] = part if acc[t] is None else acc[t] + part
            for t in diffs:
                result.setdefault(t, {})[k] = acc[t] / cover
        return result
