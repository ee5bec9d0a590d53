"""Putting captum-style baselines into a TensorDict: a scalar or one example broadcast to the batch."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.keys import join

__all__ = ["set_baselines"]

Baseline = float | int | bool | torch.Tensor


def set_baselines(
    td: TensorDictBase,
    baselines: Baseline | Mapping[NestedKey, Baseline],
    keys: list[NestedKey] | None = None,
) -> TensorDictBase:
    """Write ``("baseline", k)`` for each input ``k`` (``keys``, or the keys of a ``baselines`` mapping) and
    return ``td``: a scalar fills the input's shape, a tensor shaped like one example (``k.shape[batch:]``,
    with or without a leading 1) is repeated over the batch, a tensor shaped like the input is used as is.

    >>> set_baselines(td, 0.5, ["input"]); set_baselines(td, {"obs": mean_obs, "goal": 0.0})
    """
    if isinstance(baselines, Mapping):
        items = dict(baselines) if keys is None else {k: baselines[k] for k in keys}
    elif keys is None:
        raise ValueError(
            "set_baselines(td, value) needs keys=[...] naming the inputs (or a {key: value} mapping)"
        )
    else:
        items = {k: baselines for k in keys}
    nb = td.batch_dims
    for k, b in items.items():
        x = td.get(k)
        example = tuple(x.shape[nb:])
        b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
        if b.dim() == 0:
            value = b.expand(x.shape)
        elif tuple(b.shape) in (example, (1, *example)):
            value = b.reshape(example).expand(x.shape)
        elif b.shape == x.shape:
            value = b
        else:
            raise ValueError(
                f"baseline for {k!r} has shape {tuple(b.shape)}; expected a scalar, one example {example}, "
                f"(1, *{example}) or the input's shape {tuple(x.shape)}"
            )
        td.set(join("baseline", k), value.clone())
    return td
