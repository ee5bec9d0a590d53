"""Coalitions of features: a coalition's value is the target at the inputs with the coalition's features kept
and every other feature replaced by its baseline. The Shapley methods, Lime and KernelShap are read off such
values; every entry of a TensorDict target comes from the same forwards, so K per-target maps cost the
forwards of one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import baselines
from rlhook.attribution.occlusion import perturbation_scores
from rlhook.methods import Prepared
from rlhook.targets import Target, evaluate

__all__ = ["coalition_values"]


def coalition_values(
    hooked: Prepared,
    flat: TensorDictBase,
    keys: list[NestedKey],
    positions: dict[NestedKey, torch.Tensor],
    target: Target,
    n_coalitions: int,
    included: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int | None = None,
) -> dict[str | None, torch.Tensor]:
    """``{target name: (P, B)}``: every target at every example with the features of coalition ``p`` kept and
    the others replaced by ``("baseline", k)`` (zeros if absent). ``included(p)`` maps coalition indices
    ``(R,)`` to a ``(R, F)`` bool tensor. Rows run ``chunk_size`` at a time without gradients."""
    base = baselines(flat, keys)
    xs = {k: flat.get(k) for k in keys}

    def perturb(rows: TensorDictBase, p: torch.Tensor, ex: torch.Tensor) -> None:
        z = included(p)
        for k in keys:
            pos = positions[k][ex]
            keep = z.gather(1, pos.reshape(pos.shape[0], -1)).reshape(pos.shape)
            rows.set(k, torch.where(keep, xs[k][ex], base[k][ex]))

    def score(out: TensorDictBase, ex: torch.Tensor) -> dict:
        return evaluate(target, out, batch_dims=1, floating=False)

    return perturbation_scores(hooked, flat, n_coalitions, perturb, score, chunk_size, target)
