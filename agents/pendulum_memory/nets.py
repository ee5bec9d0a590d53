"""Policies for the masked-velocity pendulum (``envs.pendulum_masked``) and their checkpoints.

Two architectures (``config["arch"]``):

- ``"lstm"``: ``ProbabilisticActor`` around ``TensorDictSequential(LSTMModule, head)``. The ``LSTMModule``
  (path ``"module.0.module.0"`` from the actor, its ``nn.LSTM`` at ``"module.0.module.0.lstm"``) reads
  ``"observation"`` ``[*B, 6]``, ``"recurrent_state_h"``/``"recurrent_state_c"`` ``[*B, 1, H]`` and ``"is_init"``
  and writes ``"memory"`` ``[*B, H]`` and the next state under ``"next"``. The head (:class:`MemoryHead`, path
  ``"module.0.module.1"``) maps ``cat(memory, observation)`` to ``"loc"``/``"scale"`` ``[*B, 1]``.
- ``"framestack"``: an MLP actor reading ``"observation_stack"`` ``[*B, frames * 6]`` (``CatFrames``).

The critic is asymmetric: an MLP on the full 9-d ``"full_observation"`` (velocities included), used only for
training (GAE); the policy never sees the velocities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.modules import LSTMModule, ProbabilisticActor, ValueOperator

from agents import checkpoints
from agents.pendulum.nets import make_critic_net, mlp_layers, policy_from
from envs.pendulum_masked import FULL_OBS_KEY, MASKED_OBS_NAMES, STACK_KEY

ROOT = Path(__file__).parent / "checkpoints"
FORMAT = "rlhook-pendulum-memory-v1"
DEFAULT_CONFIG: dict[str, Any] = {
    "arch": "lstm",
    "obs_dim": len(MASKED_OBS_NAMES),
    "hidden": 64,  # LSTM hidden size
    "head_cells": 64,
    "frames": 4,  # framestack only
    "mlp_cells": 128,  # framestack actor width
    "critic_cells": 128,
    "value_scale": 100.0,
    "noise_std": 0.0,
}


def _config(config: dict[str, Any] | None) -> dict[str, Any]:
    c = {**DEFAULT_CONFIG, **(config or {})}
    if c["arch"] not in ("lstm", "framestack"):
        raise ValueError(f"config['arch'] must be 'lstm' or 'framestack', got {c['arch']!r}")
    return c


class MemoryHead(nn.Module):
    """``(memory [*B, H], observation [*B, F]) -> (loc, scale)`` each ``[*B, 1]``: Linear, Tanh, Linear."""

    def __init__(self, hidden: int, obs_dim: int, cells: int):
        super().__init__()
        self.fc0 = nn.Linear(hidden + obs_dim, cells)
        self.act0 = nn.Tanh()
        self.out = nn.Linear(cells, 2)
        self.split = NormalParamExtractor()

    def forward(self, memory: torch.Tensor, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.out(self.act0(self.fc0(torch.cat([memory, observation], -1)))))


def make_lstm(config: dict[str, Any] | None = None) -> LSTMModule:
    """The policy's ``LSTMModule`` (``"observation"`` -> ``"memory"``, state keys ``recurrent_state_h/c``)."""
    c = _config(config)
    return LSTMModule(
        input_size=c["obs_dim"],
        hidden_size=c["hidden"],
        in_keys=["observation", "recurrent_state_h", "recurrent_state_c"],
        out_keys=["memory", ("next", "recurrent_state_h"), ("next", "recurrent_state_c")],
    )


def make_actor(config: dict[str, Any] | None = None) -> ProbabilisticActor:
    """A fresh (randomly initialised) policy of ``config["arch"]``; see the module docstring."""
    c = _config(config)
    if c["arch"] == "lstm":
        head = TensorDictModule(
            MemoryHead(c["hidden"], c["obs_dim"], c["head_cells"]),
            in_keys=["memory", "observation"],
            out_keys=["loc", "scale"],
        )
        return policy_from(TensorDictSequential(make_lstm(c), head))
    layers = mlp_layers(c["frames"] * c["obs_dim"], c["mlp_cells"], 2)
    layers["out"] = nn.Linear(c["mlp_cells"], 2)
    layers["split"] = NormalParamExtractor()
    net = TensorDictModule(nn.Sequential(layers), in_keys=[STACK_KEY], out_keys=["loc", "scale"])
    return policy_from(net)


def make_critic(config: dict[str, Any] | None = None) -> ValueOperator:
    """Asymmetric critic: ``"full_observation"`` ``[*B, 9]`` -> ``"state_value"`` ``[*B, 1]``."""
    c = _config(config)
    net = make_critic_net(
        {"obs_dim": 9, "num_cells": c["critic_cells"], "depth": 2, "value_scale": c["value_scale"]}
    )
    return ValueOperator(net, in_keys=[FULL_OBS_KEY])


def primer(actor: ProbabilisticActor):
    """The env transform that initialises an LSTM actor's state (``None`` for a framestack actor)."""
    lstm = recurrent_module(actor)
    return None if lstm is None else lstm.make_tensordict_primer()


def recurrent_module(actor: ProbabilisticActor) -> LSTMModule | None:
    """The actor's ``LSTMModule``, or ``None`` for a framestack actor."""
    return next((m for m in actor.modules() if isinstance(m, LSTMModule)), None)


def env_kwargs(config: dict[str, Any], actor: ProbabilisticActor) -> dict[str, Any]:
    """Keyword arguments of ``envs.pendulum_masked.make_masked_env`` matching this policy."""
    c = _config(config)
    frames = c["frames"] if c["arch"] == "framestack" else 0
    return {"primers": primer(actor), "frames": frames, "noise_std": c["noise_std"]}


def save_agent(path: str | Path, actor, critic, obs_stats, config, meta=None) -> None:
    """Write a checkpoint loadable with ``torch.load(path, weights_only=True)``."""
    state = {
        "format": FORMAT,
        "config": _config(config),
        "actor": {k: v.detach().clone() for k, v in actor.state_dict().items()},
        "critic": {k: v.detach().clone() for k, v in critic.state_dict().items()},
        "obs_stats": {k: v.detach().clone().float() for k, v in obs_stats.items()},
        "meta": dict(meta or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    checkpoints.record(path)


def load_agent(path: str | Path) -> tuple[ProbabilisticActor, ValueOperator, dict[str, Any]]:
    """``(actor, critic, state)`` from a checkpoint; ``state`` has ``config, obs_stats, meta``.

    Build the matching env with ``make_masked_env(obs_stats=state["obs_stats"], **env_kwargs(state["config"],
    actor))``. Both modules are returned in eval mode.
    """
    state = checkpoints.load(path)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (format={state.get('format')!r})")
    actor, critic = make_actor(state["config"]), make_critic(state["config"])
    actor.load_state_dict(state["actor"])
    critic.load_state_dict(state["critic"])
    return actor.eval(), critic.eval(), state
