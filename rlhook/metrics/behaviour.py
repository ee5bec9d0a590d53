"""RL behaviour under masking: does the agent still act the same, and how much does its value move, when the
most attributed inputs are set to the baseline?"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.hooked import get_key
from rlhook.metrics.curves import masked_inputs, ranks
from rlhook.metrics.perturb import as_hooked, attributions, input_keys, write_metric

__all__ = ["masked_behaviour"]


def masked_behaviour(
    model: nn.Module,
    td: TensorDictBase,
    *,
    action: NestedKey | Callable[[TensorDictBase], torch.Tensor] | None = "logits",
    value: NestedKey | Callable[[TensorDictBase], torch.Tensor] | None = None,
    fractions: Sequence[float] = (0.1, 0.25, 0.5),
    inputs: Sequence[NestedKey] | None = None,
    key: str = "attr",
    continuous_tol: float | None = None,
    order: Literal["attr", "random"] = "attr",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Action agreement and value change when the top ``fractions`` of attributed features are masked.

    ``action``: a key of logits (greedy action = argmax of the last dim), of a continuous action (``loc``, with
    ``continuous_tol``: agreement = every component within the tolerance), or ``fn(out) -> actions``.
    ``value``: a key or ``fn(out) -> Tensor(batch)`` (e.g. ``"state_value"``); the change is masked - clean.

    Returns and writes ``("metrics", "action_agreement")`` (1.0 / 0.0) and ``("metrics", "value_change")``, each
    of shape ``(*batch, len(fractions))``. ``order="random"`` masks random features instead (the reference).
    """
    if action is None and value is None:
        raise ValueError("masked_behaviour needs action=... and/or value=...")
    hooked = as_hooked(model)
    keys = input_keys(hooked, td, inputs)
    attr = attributions(td, keys, key)
    rank = ranks(td, keys, attr, order, seed)
    counts = torch.round(
        torch.tensor([float(f) for f in fractions], dtype=torch.float64) * rank.shape[-1]
    ).long()
    masked = masked_inputs(td, keys, rank, counts)
    S = len(counts)
    base = td.exclude("attr", "baseline", "metrics")
    with torch.no_grad():
        clean = hooked.model_forward(base.copy())
        big = base.expand(S, *td.batch_size).clone()
        for k, v in masked.items():
            big.set(k, v)
        out = hooked.model_forward(big)
    results = {}

    def read(spec, o):
        return spec(o) if callable(spec) else get_key(o, spec, what="output")

    if action is not None:
        a0, a1 = read(action, clean), read(action, out)
        if continuous_tol is None and not callable(action):
            agree = a0.argmax(-1)[None] == a1.argmax(-1)
        elif continuous_tol is not None:
            close = (a1 - a0[None]).abs() <= continuous_tol
            agree = close.reshape(*close.shape[: td.batch_dims + 1], -1).all(-1)
        else:
            eq = a1 == a0[None]
            agree = eq.reshape(*eq.shape[: td.batch_dims + 1], -1).all(-1)
        results["action_agreement"] = write_metric(td, "action_agreement", agree.float().movedim(0, -1))
    if value is not None:
        v0, v1 = read(value, clean), read(value, out)
        change = (v1 - v0[None]).reshape(S, *td.batch_size, -1).sum(-1)
        results["value_change"] = write_metric(td, "value_change", change.movedim(0, -1))
    return results
