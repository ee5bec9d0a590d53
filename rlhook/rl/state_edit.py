"""Causal edits of a recurrent policy's state while it acts: patch the state from another episode, or move it
along a probed direction; measure with ``paired_rollouts`` (closed loop) or on recorded steps (open loop).

``StateEdit(edit)`` is a ``Method``: inside ``prepare(policy)`` a forward hook on the policy's TorchRL
``LSTMModule``/``GRUModule`` calls ``edit(td)`` on the module's output TensorDict, which holds the step's
inputs (``"observation"``, ``"step_count"``...), its output (e.g. ``"memory"``) and the next state (e.g.
``("next", "recurrent_state_h")``); the edit returns the new values for those. The module output and the next
state are edited together, so the action of this step and the memory carried to the next one agree. Runs
step by step (sequential mode), as collectors and ``env.rollout`` run a policy.

Edits shipped here (picklable):

- ``ShiftAlong(direction, delta)``: add ``delta * d / |d|^2`` to the hidden state (and cell state, when
  ``d`` covers ``cat(h, c)``), so a linear probe with weights ``d`` reads ``delta`` more;
- ``ReplaceState(states, steps)``: at the given ``step_count`` values, replace the state by another
  episode's (``states[k]`` ``[T, ...]`` indexed by step count).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.rl.memory import recurrent_module

__all__ = ["ReplaceState", "ShiftAlong", "StateEdit"]


def _active(td: TensorDictBase, steps: Sequence[int] | None) -> torch.Tensor | None:
    """``[B]`` mask of rows whose ``step_count`` is in ``steps`` (None: all rows)."""
    if steps is None:
        return None
    if "step_count" not in td.keys():
        raise KeyError("a step-restricted state edit reads 'step_count'; add StepCounter() to the env")
    count = td.get("step_count").reshape(-1)
    return torch.isin(count, torch.as_tensor(list(steps), dtype=count.dtype))


class ShiftAlong:
    """Move the state along ``direction`` (``[H]`` on ``h``, or ``[2H]`` on ``cat(h, c)``) so that a linear
    readout with these weights changes by ``delta``; only at ``steps`` (step counts) when given."""

    def __init__(self, direction: torch.Tensor, delta: float, steps: Sequence[int] | None = None) -> None:
        d = torch.as_tensor(direction, dtype=torch.float32).reshape(-1)
        if not torch.isfinite(d).all() or float(d.norm()) == 0:
            raise ValueError("direction must be a finite, non-zero vector")
        self.direction, self.delta, self.steps = d, float(delta), steps

    def __call__(self, td, h, c):
        shift = self.delta * self.direction / self.direction.pow(2).sum()
        size = h.shape[-1]
        if shift.numel() not in (size, 2 * size) or (shift.numel() == 2 * size and c is None):
            raise ValueError(
                f"direction has {shift.numel()} entries; the state has H={size} (use [H] for h, [2H] for cat(h, c))"
            )
        mask = _active(td, self.steps)
        gate = 1.0 if mask is None else mask.to(h.dtype).reshape(-1, *[1] * (h.dim() - 1))
        h = h + gate * shift[:size].to(h)
        if shift.numel() == 2 * size:
            c = c + gate * shift[size:].to(c)
        return h, c


class ReplaceState:
    """At step counts ``steps``, replace the state entering the output by a donor episode's: ``states`` holds
    ``"h"`` (and ``"c"``) of shape ``[T, layers, H]`` indexed by step count (a recorded rollout's
    ``("next", state key)``)."""

    def __init__(self, states: Mapping[str, torch.Tensor], steps: Sequence[int]) -> None:
        if "h" not in states:
            raise ValueError("states needs 'h' (and 'c' for an LSTM), each [T, layers, H]")
        self.states, self.steps = {k: v.detach() for k, v in states.items()}, list(steps)

    def __call__(self, td, h, c):
        mask = _active(td, self.steps)
        count = td.get("step_count").reshape(-1).clamp(max=len(self.states["h"]) - 1)
        m = mask.reshape(-1, *[1] * (h.dim() - 1))
        h = torch.where(m, self.states["h"][count].to(h), h)
        if c is not None and "c" in self.states:
            c = torch.where(m, self.states["c"][count].to(c), c)
        return h, c


class StateEdit(Method):
    """Edit a recurrent policy's state at every step it runs (see the module docstring).

    Args:
        edit: ``edit(td, h, c) -> (h, c)`` with ``h, c`` ``[B, layers, H]`` (``c`` is None for a GRU) the
            state after this step; the module output (``"memory"``) is set to the new last-layer ``h``.

    Calling the prepared policy runs it with the edit; writes the policy's usual outputs.
    """

    def __init__(self, edit: Callable) -> None:
        if not callable(edit):
            raise TypeError(f"edit must be callable (td, h, c) -> (h, c), got {type(edit).__name__}")
        self.edit = edit

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        rnn = recurrent_module(hooked.model)
        out_key, *next_keys = rnn.out_keys
        hooks.forward(rnn, _Hook(self.edit, out_key, next_keys))

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        return hooked.model(td)


class _Hook:
    def __init__(self, edit: Callable, out_key: NestedKey, next_keys: list[NestedKey]) -> None:
        self.edit, self.out_key, self.next_keys = edit, out_key, next_keys

    def __call__(self, module, args, out: TensorDictBase) -> None:
        h = out.get(self.next_keys[0])
        c = out.get(self.next_keys[1]) if len(self.next_keys) > 1 else None
        shape = h.shape
        flat = out.reshape(-1) if out.batch_dims else out.unsqueeze(0)
        h2, c2 = self.edit(
            flat, h.reshape(-1, *shape[-2:]), None if c is None else c.reshape(-1, *shape[-2:])
        )
        out.set(self.next_keys[0], h2.reshape(shape))
        if c is not None:
            out.set(self.next_keys[1], c2.reshape(shape))
        memory = out.get(self.out_key)
        out.set(self.out_key, h2[..., -1, :].reshape(memory.shape))
