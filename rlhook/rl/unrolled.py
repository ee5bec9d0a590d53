"""Time-unrolled attribution: explain a recurrent policy's output at step t by the observations t-k .. t.

A recurrent policy's action at step t depends on every observation since the episode started, through its
state. ``time_windows`` cuts a recorded rollout into windows of ``k + 1`` steps ending at the explained steps;
each window starts from the recurrent state the rollout stored at its first step (a fixed context, not
attributed) and stops at the episode's start: steps of an earlier episode (before an ``is_init``) or before the
recording began are marked invalid and get exactly zero attribution. ``UnrolledPolicy`` runs the policy in
recurrent mode over a window and writes its outputs at the window's last step, so every rlhook gradient method
(``Saliency``, ``IntegratedGradients`` with one straight path for the whole window, ...) attributes them to the
window's observations. ``attribute_over_time`` does this over a whole rollout in chunks of windows (memory is
bounded by ``window_chunk * (k + 1)`` unrolled steps, results equal unchunked ones).

>>> out = attribute_over_time(Saliency(target="action_log_prob", abs=False), actor, rollout, lags=16)
>>> out["attr", "observation"]      # [N, 17, F], chronological: position -1 is lag 0 (step t itself)
>>> out["window", "valid"]          # [N, 17] steps of the same episode as t

Window TensorDict (batch ``[N]``): ``obs_key`` ``[N, L, F]``; the state keys ``[N, L, ...]`` as stored in the
rollout (zeroed on its ``is_init`` steps); ``"is_init"`` ``[N, L, 1]``, set on each window's first valid step
(so the recurrent module restarts there from the stored state); ``action_key`` ``[N, L, A]``;
``("window", "valid")`` ``[N, L]``, ``("window", "lag")`` ``[N, L]`` (``k .. 0``), ``("window", "end")`` ``[N]``
(flat index of the explained step in the rollout).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

from rlhook.extras import require
from rlhook.methods import Method

__all__ = ["UnrolledPolicy", "attribute_over_time", "recurrent_state_keys", "stack_by_lag", "time_windows"]

WINDOW = "window"


def recurrent_state_keys(policy: TensorDictModuleBase) -> list[NestedKey]:
    """The state input keys of the TorchRL ``LSTMModule``/``GRUModule`` inside ``policy`` (``is_init`` excluded)."""
    modules = require("torchrl.modules", "rl")
    found = [m for m in policy.modules() if isinstance(m, (modules.LSTMModule, modules.GRUModule))]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one TorchRL LSTMModule or GRUModule in the policy, found {len(found)}; pass "
            "state_keys=[...] (the root keys holding the recurrent state) explicitly"
        )
    return [k for k in found[0].in_keys[1:] if k != "is_init"]


def _episode_ids(is_init: torch.Tensor) -> torch.Tensor:
    """Per-step episode number along the last dim (a new one at each ``is_init``)."""
    return torch.cumsum(is_init.long(), -1)


def time_windows(
    rollout: TensorDictBase,
    lags: int,
    ends: torch.Tensor | Sequence[int] | None = None,
    *,
    obs_key: NestedKey = "observation",
    state_keys: Sequence[NestedKey] = ("recurrent_state_h", "recurrent_state_c"),
    action_key: NestedKey = "action",
) -> TensorDict:
    """Windows of ``lags + 1`` steps ending at ``ends`` (flat step indices; default: every step).

    ``rollout`` has batch shape ``[T]`` or ``[B, T]`` (time last, as collectors and ``env.rollout`` give) and
    holds ``obs_key``, ``"is_init"`` (``InitTracker``), the state keys and ``action_key``. Windows never
    cross rows of a ``[B, T]`` rollout. See the module docstring for the layout.
    """
    if not isinstance(lags, int) or lags < 0:
        raise ValueError(f"lags must be an int >= 0 (how many past steps to attribute to), got {lags!r}")
    if rollout.batch_dims not in (1, 2):
        raise ValueError(f"rollout must have batch shape [T] or [B, T], got {tuple(rollout.batch_size)}")
    keys = set(rollout.keys(True))
    for k in (obs_key, "is_init", action_key, *state_keys):
        if k not in keys:
            hint = " (add InitTracker() to the env)" if k == "is_init" else ""
            raise KeyError(f"the rollout has no {k!r} entry{hint}; it holds {sorted(map(str, keys))}")
    flat = rollout.reshape(-1) if rollout.batch_dims == 2 else rollout
    t_len = rollout.batch_size[-1]
    is_init = rollout.get("is_init").reshape(*rollout.batch_size).bool()
    episode = _episode_ids(is_init) + torch.arange(is_init.numel()).reshape(is_init.shape) // t_len * t_len
    episode = episode.reshape(-1)
    n_all = flat.batch_size[0]
    ends = torch.arange(n_all) if ends is None else torch.as_tensor(ends, dtype=torch.long).reshape(-1)
    if ends.numel() and (int(ends.min()) < 0 or int(ends.max()) >= n_all):
        raise IndexError(f"ends must be flat step indices in [0, {n_all}), got {ends.min()}..{ends.max()}")
    offsets = torch.arange(-lags, 1)
    idx = ends[:, None] + offsets[None]  # [N, L]
    row_start = ends // t_len * t_len
    valid = idx >= row_start[:, None]
    safe = idx.clamp(min=0)
    valid &= episode[safe] == episode[ends][:, None]
    first = valid.long().argmax(-1)  # first valid position (the end itself is always valid)
    starts = torch.zeros_like(valid)
    starts[torch.arange(len(ends)), first] = True

    def gather(key: NestedKey) -> torch.Tensor:
        v = flat.get(key)[safe]
        return torch.where(valid.reshape(*valid.shape, *[1] * (v.dim() - 2)), v, torch.zeros_like(v))

    out = TensorDict({}, batch_size=[len(ends)])
    out.set(obs_key, gather(obs_key))
    out.set(action_key, gather(action_key))
    init_flat = flat.get("is_init").reshape(-1).bool()[safe]
    for k in state_keys:
        s = gather(k)
        out.set(k, torch.where(init_flat.reshape(*init_flat.shape, *[1] * (s.dim() - 2)), 0, s))
    out.set("is_init", starts.unsqueeze(-1))
    out.set((WINDOW, "valid"), valid)
    out.set((WINDOW, "lag"), (-offsets).expand(len(ends), -1).clone())
    out.set((WINDOW, "end"), ends)
    return out


class UnrolledPolicy(TensorDictModuleBase):
    """A recurrent TorchRL policy run over windows ``[N, L]``; writes its outputs at each window's last step.

    Reads ``obs_key`` ``[N, L, F]``, the state keys, ``"is_init"`` and ``action_key`` (as ``time_windows``
    writes them). Writes ``"loc"``, ``"scale"`` (``[N, A]``, the distribution parameters at the last step) and
    ``"action_log_prob"`` ``[N]``: the log-probability, under the policy at the last step, of the action the
    rollout took there. ``policy`` needs ``get_dist`` (a ``ProbabilisticActor``); it is run under
    ``set_recurrent_mode(True)`` and never modified.
    """

    def __init__(
        self,
        policy: TensorDictModuleBase,
        *,
        obs_key: NestedKey = "observation",
        state_keys: Sequence[NestedKey] | None = None,
        action_key: NestedKey = "action",
    ) -> None:
        super().__init__()
        if not hasattr(policy, "get_dist"):
            raise TypeError(
                f"UnrolledPolicy needs a policy with get_dist (a ProbabilisticActor), got {type(policy)}"
            )
        self.policy = policy
        self.obs_key, self.action_key = obs_key, action_key
        self.state_keys = list(recurrent_state_keys(policy) if state_keys is None else state_keys)
        self.in_keys = [obs_key, *self.state_keys, "is_init", action_key]
        self.out_keys = ["loc", "scale", "action_log_prob"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.obs_key)
        n, steps = obs.shape[:2]
        inner = TensorDict({k: tensordict.get(k) for k in self.in_keys}, batch_size=[n, steps])
        with require("torchrl.modules", "rl").set_recurrent_mode(True):
            dist = self.policy.get_dist(inner)
        action = tensordict.get(self.action_key)
        log_prob = dist.log_prob(action)
        if log_prob.dim() == 3:  # a distribution without a summed event dim
            log_prob = log_prob.sum(-1)
        tensordict.set("loc", inner.get("loc")[:, -1])
        tensordict.set("scale", inner.get("scale")[:, -1])
        tensordict.set("action_log_prob", log_prob[:, -1])
        return tensordict


def attribute_over_time(
    method: Method,
    policy: TensorDictModuleBase,
    rollout: TensorDictBase,
    lags: int,
    ends: torch.Tensor | Sequence[int] | None = None,
    *,
    window_chunk: int = 256,
    baseline: torch.Tensor | None = None,
    obs_key: NestedKey = "observation",
    state_keys: Sequence[NestedKey] | None = None,
    action_key: NestedKey = "action",
) -> TensorDict:
    """Run ``method`` (e.g. ``Saliency(target="action_log_prob", abs=False)``) on windows of ``rollout``.

    Windows are built and attributed ``window_chunk`` at a time. ``baseline`` (``[F]`` or ``[L, F]``, default
    zeros) becomes ``("baseline", obs_key)`` for path methods; the recurrent state entering each window is held
    fixed. A gradient method without ``inputs=`` attributes to ``obs_key`` only (a copy of it is configured so;
    pass ``inputs=[obs_key, *state_keys]`` to also get the gradient at the entering state). Returns the windows (``time_windows`` layout,
    batch ``[N]``) with the method's products, e.g. ``("attr", obs_key)`` ``[N, L, F]``, and the explained
    outputs ``"loc"``, ``"scale"``, ``"action_log_prob"`` (see ``UnrolledPolicy``); the policy's
    parameters are left untouched and no hook remains.
    """
    if not isinstance(window_chunk, int) or window_chunk < 1:
        raise ValueError(f"window_chunk must be an int >= 1, got {window_chunk!r}")
    module = UnrolledPolicy(policy, obs_key=obs_key, state_keys=state_keys, action_key=action_key)
    options = getattr(method, "options", None)
    if options is not None and getattr(options, "inputs", ()) is None:  # attribute to the observations only
        method = copy.copy(method)
        method.options = dataclasses.replace(options, inputs=[obs_key])
    n_all = rollout.numel()
    ends = torch.arange(n_all) if ends is None else torch.as_tensor(ends, dtype=torch.long).reshape(-1)
    parts = []
    with method.prepare(module) as hooked, torch.enable_grad():
        for s in range(0, len(ends), window_chunk):
            win = time_windows(
                rollout,
                lags,
                ends[s : s + window_chunk],
                obs_key=obs_key,
                state_keys=module.state_keys,
                action_key=action_key,
            )
            obs = win.get(obs_key)
            base = torch.zeros_like(obs) if baseline is None else baseline.to(obs).expand_as(obs).clone()
            win.set(("baseline", obs_key), base)
            with torch.no_grad():
                explained = module(win.clone(False)).select(*module.out_keys)
            out = hooked(win).update(explained)
            parts.append(out.apply(lambda v: v.detach()))
    return (
        torch.cat(parts)
        if parts
        else time_windows(rollout, lags, ends, obs_key=obs_key, state_keys=module.state_keys)
    )


def stack_by_lag(stacked: torch.Tensor, frames: int, step_count: torch.Tensor | None = None):
    """A ``CatFrames`` observation (or its attribution) ``[N, frames * F]`` as ``[N, frames, F]``, oldest first,
    the same layout as a window; with ``step_count`` (``[N]`` or ``[N, 1]``, steps taken before this one) also
    the ``[N, frames]`` mask of frames from the current episode (``CatFrames`` pads the rest with the first)."""
    if stacked.shape[-1] % frames:
        raise ValueError(f"the last dim {stacked.shape[-1]} is not a multiple of frames={frames}")
    view = stacked.reshape(*stacked.shape[:-1], frames, stacked.shape[-1] // frames)
    if step_count is None:
        return view
    lag = torch.arange(frames - 1, -1, -1)
    return view, lag[None] <= step_count.reshape(-1, 1)
