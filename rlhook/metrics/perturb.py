"""What every faithfulness metric shares: the attributed inputs, their maps, and runs on perturbed copies."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.hooked import HookedModule, get_key
from rlhook.targets import SINGLE, Target, evaluate

__all__ = ["as_hooked", "attributions", "baseline_of", "input_keys", "score", "score_many", "write_metric"]


def _parts(k: NestedKey) -> tuple:
    return (k,) if isinstance(k, str) else tuple(k)


def as_hooked(model: nn.Module) -> HookedModule:
    """``model`` as a ``HookedModule`` (kept as is if it already is one, e.g. a prepared method's module)."""
    return model if isinstance(model, HookedModule) else HookedModule(model)


def input_keys(
    hooked: HookedModule, td: TensorDictBase, inputs: Sequence[NestedKey] | None
) -> list[NestedKey]:
    """The attributed inputs: ``inputs`` or the hooked module's floating in_keys."""
    if inputs is not None:
        keys = list(inputs)
        for k in keys:
            get_key(td, k)
        return keys
    keys = [k for k in hooked.in_keys if torch.is_floating_point(get_key(td, k))]
    if not keys:
        raise ValueError(f"no floating input among {hooked.in_keys}; pass inputs=[...]")
    return keys


def attributions(td: TensorDictBase, keys: Sequence[NestedKey], key: str | NestedKey = "attr") -> dict:
    """``{k: td[(key, k)]}`` checked against each input's shape."""
    out = {}
    for k in keys:
        a = get_key(td, (*_parts(key), *_parts(k)), what="attribution")
        if a.shape != td.get(k).shape:
            raise ValueError(
                f"attribution of {k!r} has shape {tuple(a.shape)}, the input {tuple(td.get(k).shape)}"
            )
        out[k] = a.detach()
    return out


def baseline_of(td: TensorDictBase, k: NestedKey) -> torch.Tensor:
    """``("baseline", k)`` broadcast to the input (zeros when absent)."""
    x = td.get(k)
    b = td.get(("baseline", *_parts(k)), None)
    return torch.zeros_like(x) if b is None else b.expand_as(x).to(x.dtype)


def _single(target: Target, out: TensorDictBase, batch_dims: int) -> torch.Tensor:
    scores = evaluate(target, out, batch_dims=batch_dims)
    if list(scores) != [SINGLE]:
        raise ValueError(
            f"this metric takes one target; the target gave {len(scores)} named entries {list(scores)}: "
            "pass one of them (e.g. lambda out: out['output'][..., 3])"
        )
    return scores[SINGLE].detach()


def score(hooked: HookedModule, td: TensorDictBase, target: Target) -> torch.Tensor:
    """``target`` on the model's outputs for ``td`` (not modified), shape ``td.batch_size``."""
    with torch.no_grad():
        return _single(target, hooked.model_forward(td.copy()), td.batch_dims)


def score_many(
    hooked: HookedModule,
    td: TensorDictBase,
    target: Target,
    values: dict[NestedKey, torch.Tensor],
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Target for ``S`` perturbed copies: ``values[k]`` has shape ``(S, *td[k].shape)``; returns ``(S, *batch)``.

    ``chunk_size`` bounds the copies run at once; results equal the unchunked ones.
    """
    n = len(next(iter(values.values())))
    size = n if chunk_size is None else max(1, chunk_size)
    base = td.exclude("attr", "baseline", "metrics")
    out = []
    for s in range(0, n, size):
        m = min(size, n - s)
        big = base.expand(m, *td.batch_size).clone()
        for k, v in values.items():
            big.set(k, v[s : s + m].to(td.get(k).dtype))
        with torch.no_grad():
            out.append(_single(target, hooked.model_forward(big), big.batch_dims))
    return torch.cat(out)


def write_metric(td: TensorDictBase, name: str, value: torch.Tensor) -> torch.Tensor:
    """Write ``("metrics", name)`` (leading dims = the batch) and return ``value``."""
    td.set(("metrics", name), value)
    return value
