"""Feature sets for probing a recurrent policy's memory, next to the controls that make a probe score mean
something (use them with ``rlhook.latent.probe_with_controls``).

- ``replay_states(policy, rollout)``: the recurrent state a policy (e.g. a random-init copy of the trained
  one) reaches on the rollout's observation sequence, step by step with resets at ``is_init``: the
  "same sequences through an untrained recurrent net" control.
- ``lagged_observations(rollout, k)``: the last ``k + 1`` observations of the same episode, concatenated
  (zero before the episode start): what a linear filter over recent history can read (``k = 0``: the
  current observation alone).
- ``selectivity(rows)``: each quantity's trained score minus the best control score, from the tidy rows
  ``probe_with_controls`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

from rlhook.extras import require

__all__ = ["lagged_observations", "recurrent_module", "replay_states", "selectivity"]


def recurrent_module(policy: TensorDictModuleBase) -> TensorDictModuleBase:
    """The single TorchRL ``LSTMModule`` or ``GRUModule`` inside ``policy``."""
    modules = require("torchrl.modules", "rl")
    found = [m for m in policy.modules() if isinstance(m, (modules.LSTMModule, modules.GRUModule))]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one TorchRL LSTMModule or GRUModule in the policy, found {len(found)}"
        )
    return found[0]


@torch.no_grad()
def replay_states(policy: TensorDictModuleBase, rollout: TensorDictBase) -> dict[str, torch.Tensor]:
    """Run ``policy``'s recurrent module over ``rollout`` (batch ``[T]``, or ``[B, T]`` with time last) one
    step at a time, zeroing the state at ``is_init``.

    Returns ``{"memory": [*batch, H], <state key>: [*batch, layers, H], ...}``: the output and the state after
    each step (what a collector stores at ``("next", key)``). Only the recurrent module runs; it is not
    modified.
    """
    rnn = recurrent_module(policy)
    obs_key, *state_keys = [k for k in rnn.in_keys if k != "is_init"]
    out_key, *next_keys = rnn.out_keys
    for k in (obs_key, "is_init"):
        if k not in rollout.keys(True):
            raise KeyError(f"the rollout has no {k!r} entry; replay_states reads {obs_key!r} and 'is_init'")
    seq = rollout if rollout.batch_dims == 2 else rollout.unsqueeze(0)
    if seq.batch_dims != 2:
        raise ValueError(f"rollout must have batch shape [T] or [B, T], got {tuple(rollout.batch_size)}")
    b, t_len = seq.batch_size
    obs, is_init = seq.get(obs_key), seq.get("is_init").reshape(b, t_len, 1).bool()
    state: dict[NestedKey, torch.Tensor] = {}
    outs: dict[str, list[torch.Tensor]] = {"memory": [], **{_name(k): [] for k in next_keys}}
    for t in range(t_len):
        td = TensorDict({obs_key: obs[:, t], "is_init": is_init[:, t], **state}, batch_size=[b])
        rnn(td)
        outs["memory"].append(td.get(out_key))
        for k, nk in zip(state_keys, next_keys):
            state[k] = td.get(nk)
            outs[_name(nk)].append(state[k])
    result = {k: torch.stack(v, 1) for k, v in outs.items()}
    return {k: v if rollout.batch_dims == 2 else v[0] for k, v in result.items()}


def _name(key: NestedKey) -> str:
    return key if isinstance(key, str) else key[-1]


def lagged_observations(rollout: TensorDictBase, k: int, obs_key: NestedKey = "observation") -> torch.Tensor:
    """``[*batch, (k + 1) * F]``: observations ``t - k .. t`` of the same episode (oldest first), zeros before
    its start. ``rollout`` has time last and holds ``obs_key`` and ``"is_init"``."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    obs = rollout.get(obs_key)
    is_init = rollout.get("is_init").reshape(*rollout.batch_size).bool()
    episode = torch.cumsum(is_init.long(), -1)
    t_len = rollout.batch_size[-1]
    cols = []
    for lag in range(k, -1, -1):
        shifted = torch.zeros_like(obs)
        same = torch.zeros_like(is_init)
        if lag < t_len:
            shifted[..., lag:, :] = obs[..., : t_len - lag, :]
            same[..., lag:] = episode[..., lag:] == episode[..., : t_len - lag]
        cols.append(torch.where(same.unsqueeze(-1), shifted, torch.zeros_like(shifted)))
    return torch.cat(cols, -1)


def selectivity(
    rows: Sequence[dict[str, Any]], trained: str = "trained", controls: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """``{quantity: {"trained", "best_control", "control_name", "selectivity", "shuffled"}}`` from
    ``probe_with_controls`` rows: the best layer of ``trained`` against the best layer of every other feature
    set (or of ``controls``); ``shuffled`` is the trained set's shuffled-label score at its best layer."""
    out: dict[str, dict[str, Any]] = {}
    for q in dict.fromkeys(r["quantity"] for r in rows):
        mine = [r for r in rows if r["quantity"] == q and r["features"] == trained]
        others = [
            r
            for r in rows
            if r["quantity"] == q
            and r["features"] != trained
            and (controls is None or r["features"] in controls)
        ]
        if not mine or not others:
            raise ValueError(f"quantity {q!r}: need rows of {trained!r} and of at least one control")
        best, ctrl = max(mine, key=lambda r: r["score"]), max(others, key=lambda r: r["score"])
        out[q] = {
            "trained": best["score"],
            "trained_layer": best["layer"],
            "best_control": ctrl["score"],
            "control_name": f"{ctrl['features']}/{ctrl['layer']}",
            "selectivity": best["score"] - ctrl["score"],
            "shuffled": best["shuffled"],
        }
    return out
