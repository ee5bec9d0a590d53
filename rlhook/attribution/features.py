"""Feature masks: a *feature* is a group of input elements sharing an integer id (ids are shared across
inputs). Used by FeatureAblation, FeaturePermutation, the Shapley methods, Lime and KernelShap."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.keys import join

__all__ = ["FeatureMask", "as_dict", "feature_positions", "spread"]

#: integer ids, a tensor or ``{input key: tensor}``, shaped like one example of the input or like the batch
FeatureMask = torch.Tensor | Mapping[NestedKey, torch.Tensor]


def as_dict(value: Any, keys: list[NestedKey], what: str) -> dict:
    """``{key: value}`` for every key (``value`` itself when it is a mapping holding every key)."""
    if isinstance(value, Mapping):
        missing = [k for k in keys if k not in value]
        if missing:
            raise KeyError(f"{what} has no entry for inputs {missing}; it has {list(value)}")
        return {k: value[k] for k in keys}
    return {k: value for k in keys}


def _masks(flat: TensorDictBase, keys: list[NestedKey], feature_mask: FeatureMask | None) -> dict:
    n = flat.batch_size[0]
    if feature_mask is None and all(flat.get(join("feature_mask", k), None) is None for k in keys):
        masks, offset = {}, 0
        for k in keys:
            x = flat.get(k)
            size = math.prod(x.shape[1:])
            masks[k] = (torch.arange(size, device=x.device) + offset).reshape(1, *x.shape[1:]).expand(x.shape)
            offset += size
        return masks
    masks = {}
    given = {k: flat.get(join("feature_mask", k), None) for k in keys}
    shared = as_dict(feature_mask, keys, "feature_mask") if feature_mask is not None else {}
    for k in keys:
        m = given[k] if given[k] is not None else shared.get(k)
        x = flat.get(k)
        if m is None:
            raise ValueError(
                f"no feature mask for input {k!r}: pass feature_mask=... or ('feature_mask', {k!r})"
            )
        if m.is_floating_point():
            raise TypeError(f"feature_mask for {k!r} must hold integer ids, got {m.dtype}")
        m = m.to(x.device).long()
        try:
            masks[k] = m.expand(x.shape) if m.dim() == x.dim() else m.expand(n, *x.shape[1:])
        except RuntimeError:
            raise ValueError(
                f"feature_mask for {k!r} has shape {tuple(m.shape)}, which broadcasts neither to one example "
                f"{tuple(x.shape[1:])} nor to the flattened batch {tuple(x.shape)}; a mask per example goes "
                f"into the TensorDict as ('feature_mask', {k!r}), so it follows the batch (slicing, NoiseTunnel)"
            ) from None
        if (m < 0).any():
            raise ValueError(f"feature_mask for {k!r} has negative ids; ids must be >= 0")
    return masks


def feature_positions(
    flat: TensorDictBase, keys: list[NestedKey], feature_mask: FeatureMask | None
) -> tuple[torch.Tensor, dict[NestedKey, torch.Tensor]]:
    """``(ids, positions)``: the sorted distinct feature ids (F,) and, per input, each element's position in
    ``ids`` (shape of the input, values in ``[0, F)``).

    The mask per example ``("feature_mask", k)`` in ``flat`` wins over ``feature_mask``; with neither, every
    element of every input is its own feature (ids numbered input after input)."""
    masks = _masks(flat, keys, feature_mask)
    ids = torch.unique(torch.cat([m.reshape(-1) for m in masks.values()]))
    return ids, {k: torch.searchsorted(ids, m.contiguous()) for k, m in masks.items()}


def spread(values: torch.Tensor, positions: dict[NestedKey, torch.Tensor]) -> dict[NestedKey, torch.Tensor]:
    """Per-feature values ``(B, F)`` given to every element of each feature: ``{key: shape of the input}``."""
    return {
        k: values.gather(1, pos.reshape(pos.shape[0], -1)).reshape(pos.shape).to(values.dtype)
        for k, pos in positions.items()
    }
