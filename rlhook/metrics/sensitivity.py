"""Max-sensitivity (Yeh et al., 2019): the largest relative change of an explanation in a small input ball."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.metrics.perturb import attributions, input_keys, write_metric

__all__ = ["max_sensitivity"]


def max_sensitivity(
    explainer: Callable[[TensorDictBase], TensorDictBase],
    td: TensorDictBase,
    *,
    inputs: Sequence[NestedKey] | None = None,
    key: str = "attr",
    radius: float = 0.02,
    n_samples: int = 8,
    seed: int = 0,
) -> torch.Tensor:
    """``max_{|x' - x|_inf <= radius} ||attr(x') - attr(x)|| / ||attr(x)||`` over ``n_samples`` uniform draws.

    ``explainer`` is a prepared attribution (``with Saliency(t).prepare(m) as explainer``) or any callable
    ``td -> td`` writing ``(key, k)``. The norms run over all attributed inputs of an example together.
    Reads the inputs (and ``(key, k)`` if present, else the explainer computes them); writes
    ``("metrics", "max_sensitivity")`` of shape ``td.batch_size``.
    """
    hooked = explainer if hasattr(explainer, "in_keys") else None
    keys = input_keys(hooked, td, inputs) if hooked is not None else list(inputs or [])
    if not keys:
        raise ValueError("pass inputs=[...]: the explainer does not say which inputs it attributes")
    clean = td.exclude(key, "metrics").copy()
    base = attributions(explainer(clean.copy()), keys, key)
    flat = lambda m: torch.cat([m[k].reshape(*td.batch_size, -1) for k in keys], -1)
    ref = flat(base)
    norm = ref.norm(dim=-1).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    worst = torch.zeros(td.batch_size, dtype=ref.dtype, device=ref.device)
    for _ in range(n_samples):
        noisy = clean.copy()
        for k in keys:
            x = td.get(k)
            noise = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * radius
            noisy.set(k, x.detach() + noise.to(x.device))
        new = flat(attributions(explainer(noisy), keys, key))
        worst = torch.maximum(worst, (new - ref).norm(dim=-1) / norm)
    return write_metric(td, "max_sensitivity", worst)
