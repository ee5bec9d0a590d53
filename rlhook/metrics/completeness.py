"""Completeness (convergence delta): how far the attributions' sum is from ``f(x) - f(baseline)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.metrics.perturb import as_hooked, attributions, baseline_of, input_keys, score, write_metric
from rlhook.targets import Target

__all__ = ["completeness"]


def completeness(
    model: nn.Module,
    td: TensorDictBase,
    target: Target,
    *,
    inputs: Sequence[NestedKey] | None = None,
    key: str = "attr",
) -> torch.Tensor:
    """``sum_k sum(attr_k) - (f(x) - f(baseline))`` per example, shape ``td.batch_size``.

    Reads the inputs ``k``, ``(key, k)`` and ``("baseline", k)`` (zeros when absent); writes
    ``("metrics", "completeness")``. Zero for exact path methods (IG with enough steps, Shapley values).
    """
    hooked = as_hooked(model)
    keys = input_keys(hooked, td, inputs)
    attr = attributions(td, keys, key)
    total = sum(a.reshape(*td.batch_size, -1).sum(-1) for a in attr.values())
    at_base = td.copy()
    for k in keys:
        at_base.set(k, baseline_of(td, k))
    delta = total - (score(hooked, td, target) - score(hooked, at_base, target)).to(total.dtype)
    return write_metric(td, "completeness", delta)
