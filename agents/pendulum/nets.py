"""PPO actor-critic networks for the inverted double pendulum, and the shipped checkpoint.

Separate networks (what the checkpoint holds):

- actor: ``ProbabilisticActor`` reading ``"observation"`` ``[*B, 9]``, writing ``"loc"``, ``"scale"``,
  ``"action"`` (each ``[*B, 1]``) and ``"action_log_prob"`` ``[*B]``; TanhNormal on ``[-1, 1]``.
  Its MLP is ``actor.module[0].module`` with submodules ``fc0, act0, ..., fc{d-1}, act{d-1}, out, split``;
  as paths from the actor: ``"module.0.module.act1"`` etc.
- critic: ``ValueOperator`` writing ``"state_value"`` ``[*B, 1]``; its MLP is ``critic.module`` with
  submodules ``fc0, act0, ..., out, rescale`` (paths ``"module.act1"``); ``rescale`` multiplies by the fixed
  ``config["value_scale"]``.

Shared-trunk variant: :func:`make_shared_actor_critic`, one ``TensorDictModule`` around
:class:`SharedActorCritic` (submodules ``trunk.fc0 ... trunk.act{d-1}``, ``policy_head``, ``split``,
``value_head``, ``rescale``) writing ``"loc"``, ``"scale"`` and ``"state_value"`` in one call.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator

from agents import checkpoints

CHECKPOINT = Path(__file__).with_name("checkpoint.pt")
FORMAT = "rlhook-pendulum-ppo-v1"
# value_scale: the critic's last Linear is followed by a fixed multiplication (a buffer, not trained). Returns
# here reach ~900 while tanh features are bounded by 1; without it the value head needs thousands of Adam
# steps just to grow its output weights, and PPO learns several times more slowly (measured on this env).
DEFAULT_CONFIG: dict[str, Any] = {
    "obs_dim": 9,
    "action_dim": 1,
    "num_cells": 256,
    "depth": 2,
    "value_scale": 100.0,
}


def _config(config: dict[str, Any] | None) -> dict[str, Any]:
    return {**DEFAULT_CONFIG, **(config or {})}


def mlp_layers(in_dim: int, num_cells: int, depth: int) -> OrderedDict[str, nn.Module]:
    """``fc0, act0, ..., fc{depth-1}, act{depth-1}``: Linear + Tanh blocks of width ``num_cells``."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(depth):
        layers[f"fc{i}"] = nn.Linear(in_dim if i == 0 else num_cells, num_cells)
        layers[f"act{i}"] = nn.Tanh()
    return layers


def make_actor_net(config: dict[str, Any] | None = None) -> nn.Sequential:
    """MLP ``[*B, obs_dim] -> (loc [*B, action_dim], scale [*B, action_dim])``."""
    c = _config(config)
    layers = mlp_layers(c["obs_dim"], c["num_cells"], c["depth"])
    layers["out"] = nn.Linear(c["num_cells"], 2 * c["action_dim"])
    layers["split"] = NormalParamExtractor()
    return nn.Sequential(layers)


class Rescale(nn.Module):
    """Multiplies its input by a fixed factor (stored as a buffer)."""

    def __init__(self, factor: float):
        super().__init__()
        self.register_buffer("factor", torch.tensor(float(factor)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def make_critic_net(config: dict[str, Any] | None = None) -> nn.Sequential:
    """MLP ``[*B, obs_dim] -> [*B, 1]``: ``fc0, act0, ..., out, rescale``."""
    c = _config(config)
    layers = mlp_layers(c["obs_dim"], c["num_cells"], c["depth"])
    layers["out"] = nn.Linear(c["num_cells"], 1)
    layers["rescale"] = Rescale(c["value_scale"])
    return nn.Sequential(layers)


def _action_spec(action_dim: int) -> Bounded:
    return Bounded(low=-1.0, high=1.0, shape=(action_dim,), dtype=torch.float32)


def policy_from(module: TensorDictModule, action_dim: int = 1) -> ProbabilisticActor:
    """TanhNormal policy on ``[-1, 1]`` over a module that writes ``"loc"`` and ``"scale"``."""
    return ProbabilisticActor(
        module=module,
        in_keys=["loc", "scale"],
        spec=_action_spec(action_dim),
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
        return_log_prob=True,
    )


def make_actor(config: dict[str, Any] | None = None) -> ProbabilisticActor:
    """The PPO policy (see module docstring for keys and submodule paths)."""
    c = _config(config)
    net = TensorDictModule(make_actor_net(c), in_keys=["observation"], out_keys=["loc", "scale"])
    return policy_from(net, c["action_dim"])


def make_critic(config: dict[str, Any] | None = None) -> ValueOperator:
    """The PPO value function, ``"observation"`` ``[*B, 9]`` -> ``"state_value"`` ``[*B, 1]``."""
    return ValueOperator(make_critic_net(config), in_keys=["observation"])


class SharedActorCritic(nn.Module):
    """One trunk, two heads: ``observation [*B, obs_dim] -> (loc, scale [*B, action_dim], value [*B, 1])``."""

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        c = _config(config)
        self.trunk = nn.Sequential(mlp_layers(c["obs_dim"], c["num_cells"], c["depth"]))
        self.policy_head = nn.Linear(c["num_cells"], 2 * c["action_dim"])
        self.split = NormalParamExtractor()
        self.value_head = nn.Linear(c["num_cells"], 1)
        self.rescale = Rescale(c["value_scale"])

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.trunk(observation)
        loc, scale = self.split(self.policy_head(hidden))
        return loc, scale, self.rescale(self.value_head(hidden))


def make_shared_actor_critic(config: dict[str, Any] | None = None) -> TensorDictModule:
    """Shared-trunk actor-critic as ONE ``TensorDictModule``: ``"observation"`` -> ``"loc"``, ``"scale"``,
    ``"state_value"``. Wrap it with :func:`policy_from` to sample actions."""
    return TensorDictModule(
        SharedActorCritic(config), in_keys=["observation"], out_keys=["loc", "scale", "state_value"]
    )


def save_agent(
    path: str | Path,
    actor: ProbabilisticActor,
    critic: ValueOperator,
    obs_stats: dict[str, torch.Tensor],
    config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a small checkpoint loadable with ``torch.load(path, weights_only=True)``."""
    state = {
        "format": FORMAT,
        "config": _config(config),
        "actor": {k: v.detach().clone() for k, v in actor.module[0].module.state_dict().items()},
        "critic": {k: v.detach().clone() for k, v in critic.module.state_dict().items()},
        "obs_stats": {k: v.detach().clone().float() for k, v in obs_stats.items()},
        "meta": dict(meta or {}),
    }
    torch.save(state, path)
    checkpoints.record(path)


def read_checkpoint(path: str | Path | None = None) -> dict[str, Any]:
    """The raw checkpoint dict (``format, config, actor, critic, obs_stats, meta``)."""
    state = checkpoints.load(CHECKPOINT if path is None else path)  # digest-checked when shipped
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (format={state.get('format')!r})")
    return state


def load_agent(
    path: str | Path | None = None,
) -> tuple[ProbabilisticActor, ValueOperator, dict[str, torch.Tensor]]:
    """``(actor, critic, obs_stats)`` from a checkpoint (default: the shipped one).

    Build the matching env with ``envs.pendulum.make_env(obs_stats=obs_stats)``; the policy expects the
    observation normalised with exactly those stats. Both modules are returned in eval mode.
    """
    state = read_checkpoint(path)
    actor, critic = make_actor(state["config"]), make_critic(state["config"])
    actor.module[0].module.load_state_dict(state["actor"])
    critic.module.load_state_dict(state["critic"])
    return actor.eval(), critic.eval(), dict(state["obs_stats"])
