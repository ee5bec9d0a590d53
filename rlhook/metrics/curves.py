"""Deletion and insertion curves (Petsiuk et al., 2018) and their areas, for any attribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.metrics.perturb import as_hooked, attributions, baseline_of, input_keys, score_many, write_metric
from rlhook.targets import Target

__all__ = ["deletion_curve", "insertion_curve", "masked_inputs", "ranks"]


def ranks(
    td: TensorDictBase, keys: Sequence[NestedKey], attr: dict, order: str = "attr", seed: int = 0
) -> torch.Tensor:
    """Rank of every feature of every example (0 = most attributed), over all inputs jointly: ``(*batch, F)``.

    ``order="attr"`` ranks by attribution (descending, ties by position), ``"random"`` at random.
    """
    flat = torch.cat([attr[k].reshape(*td.batch_size, -1) for k in keys], -1)
    if order == "random":
        gen = torch.Generator().manual_seed(seed)
        score = torch.rand(flat.shape, generator=gen).to(flat.device)
    elif order == "attr":
        score = flat
    else:
        raise ValueError(f"order must be 'attr' or 'random', not {order!r}")
    idx = torch.sort(score, dim=-1, descending=True, stable=True).indices
    return torch.argsort(idx, dim=-1, stable=True)


def masked_inputs(
    td: TensorDictBase,
    keys: Sequence[NestedKey],
    rank: torch.Tensor,
    counts: torch.Tensor,
    insert: bool = False,
) -> dict[NestedKey, torch.Tensor]:
    """``{k: (S, *x.shape)}``: copy ``s`` has its ``counts[s]`` top-ranked features at the baseline (deletion),
    or only those at their input value and the rest at the baseline (insertion)."""
    mask = rank[None] < counts.reshape(-1, *([1] * rank.dim())).to(rank.device)  # (S, *batch, F)
    out, start = {}, 0
    for k in keys:
        x, b = td.get(k).detach(), baseline_of(td, k)
        n = x[(0,) * td.batch_dims].numel() if td.batch_dims else x.numel()
        m = mask[..., start : start + n].reshape(len(counts), *x.shape)
        start += n
        out[k] = torch.where(m, x, b) if insert else torch.where(m, b, x)
    return out


def _curve(
    mode: str,
    model: nn.Module,
    td: TensorDictBase,
    target: Target,
    inputs: Sequence[NestedKey] | None,
    key: str,
    n_steps: int,
    order: str,
    seed: int,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    hooked = as_hooked(model)
    keys = input_keys(hooked, td, inputs)
    attr = attributions(td, keys, key)
    rank = ranks(td, keys, attr, order, seed)
    n_feat = rank.shape[-1]
    fractions = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    counts = torch.round(fractions * n_feat).long()
    values = masked_inputs(td, keys, rank, counts, insert=mode == "insertion")
    curve = score_many(hooked, td, target, values, chunk_size)  # (S, *batch)
    curve = curve.movedim(0, -1)
    auc = torch.trapezoid(curve.double(), fractions.to(curve.device), dim=-1).to(curve.dtype)
    write_metric(td, f"{mode}_curve", curve)
    write_metric(td, f"{mode}_auc", auc)
    return fractions, curve, auc


def deletion_curve(
    model: nn.Module,
    td: TensorDictBase,
    target: Target,
    *,
    inputs: Sequence[NestedKey] | None = None,
    key: str = "attr",
    n_steps: int = 10,
    order: Literal["attr", "random"] = "attr",
    seed: int = 0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target as the most attributed features are moved to the baseline, a fraction ``j / n_steps`` at a time.

    Returns ``(fractions (n_steps + 1,), curve (*batch, n_steps + 1), auc (*batch))``; a faithful attribution
    makes the curve fall fast (small area). Features of all attributed inputs are ranked jointly. Reads the
    inputs, ``(key, k)``, ``("baseline", k)``; writes ``("metrics", "deletion_curve")`` and
    ``("metrics", "deletion_auc")``. ``order="random"`` gives the random-order reference curve.
    """
    return _curve("deletion", model, td, target, inputs, key, n_steps, order, seed, chunk_size)


def insertion_curve(
    model: nn.Module,
    td: TensorDictBase,
    target: Target,
    *,
    inputs: Sequence[NestedKey] | None = None,
    key: str = "attr",
    n_steps: int = 10,
    order: Literal["attr", "random"] = "attr",
    seed: int = 0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target as the most attributed features are put back into the baseline; a faithful attribution makes
    it rise fast (large area). Same shapes as ``deletion_curve``; writes ``("metrics", "insertion_curve")`` and
    ``("metrics", "insertion_auc")``."""
    return _curve("insertion", model, td, target, inputs, key, n_steps, order, seed, chunk_size)
