"""Infidelity (Yeh et al., 2019): how well attributions predict the output change under perturbations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.metrics.perturb import (
    as_hooked,
    attributions,
    baseline_of,
    input_keys,
    score,
    score_many,
    write_metric,
)
from rlhook.targets import Target

__all__ = ["infidelity"]

Perturbation = Literal["gaussian", "bernoulli"] | Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def infidelity(
    model: nn.Module,
    td: TensorDictBase,
    target: Target,
    *,
    inputs: Sequence[NestedKey] | None = None,
    key: str = "attr",
    n_samples: int = 16,
    perturbation: Perturbation | Mapping[NestedKey, Perturbation] | None = None,
    scale: float = 0.1,
    multiply_by_inputs: bool = True,
    normalize: bool = False,
    seed: int = 0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``E_pert[(sum pert * attr - (f(x) - f(x')))^2]`` per example, shape ``td.batch_size``.

    With ``multiply_by_inputs`` (attributions that are contributions: IG, Input x Gradient, Shapley) the
    perturbed input is ``x' = x - pert * (x - baseline)``: ``pert`` is the fraction of each feature's move to the
    baseline (default ``pert ~ Bernoulli(1/2)``, removing a random half of the features). Otherwise (gradients,
    ``Saliency(abs=False)``) ``x' = x - pert`` with ``pert ~ N(0, scale^2)`` by default. ``perturbation`` may be
    ``"gaussian"``, ``"bernoulli"`` or ``fn(x, generator) -> pert``, or ``{input key: one of those}`` (one per
    input, e.g. noise on a continuous observation and Bernoulli on a binary one). ``normalize`` rescales the attributions by the
    least-squares optimal factor per example first (the scale-free variant).

    Reads the inputs, ``(key, k)`` and ``("baseline", k)``; writes ``("metrics", "infidelity")``.
    ``chunk_size`` bounds the perturbed copies per forward.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    hooked = as_hooked(model)
    keys = input_keys(hooked, td, inputs)
    attr = attributions(td, keys, key)
    default = "bernoulli" if multiply_by_inputs else "gaussian"
    if isinstance(perturbation, Mapping):
        missing = [k for k in keys if k not in perturbation]
        if missing:
            raise KeyError(f"perturbation has no entry for inputs {missing}; it has {list(perturbation)}")
    gen = torch.Generator().manual_seed(seed)
    values, predicted = {}, 0.0
    for k in keys:
        x = td.get(k).detach()
        chosen = perturbation[k] if isinstance(perturbation, Mapping) else perturbation or default
        shape = (n_samples, *x.shape)
        if chosen == "gaussian":
            pert = torch.randn(shape, generator=gen, dtype=x.dtype) * scale
        elif chosen == "bernoulli":
            pert = torch.bernoulli(torch.full(shape, 0.5, dtype=x.dtype), generator=gen)
        elif callable(chosen):
            pert = torch.stack([chosen(x, gen) for _ in range(n_samples)])
        else:
            raise ValueError(f"perturbation must be 'gaussian', 'bernoulli' or a callable, not {chosen!r}")
        pert = pert.to(x.device)
        values[k] = x - pert * (x - baseline_of(td, k)) if multiply_by_inputs else x - pert
        predicted = predicted + (pert * attr[k]).reshape(n_samples, *td.batch_size, -1).sum(-1)
    actual = score(hooked, td, target)[None] - score_many(hooked, td, target, values, chunk_size)
    predicted = predicted.to(actual.dtype)
    if normalize:
        beta = (predicted * actual).mean(0) / (predicted * predicted).mean(0).clamp_min(1e-30)
        predicted = predicted * beta
    return write_metric(td, "infidelity", ((predicted - actual) ** 2).mean(0))
