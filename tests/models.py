"""Small models shared by the tests: MLP, CNN, a multi-input TensorDictModule and a keyword-input model."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn


class MLP(nn.Module):
    """``layers.{i}`` are Linear + activation blocks; output ``(..., n_out)``."""

    def __init__(self, n_in: int = 16, width: int = 32, n_out: int = 4, depth: int = 3, act=nn.ReLU) -> None:
        super().__init__()
        dims = [n_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), act()) for a, b in zip(dims[:-1], dims[1:])
        )
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class CNN(nn.Module):
    """conv1 -> relu1 -> conv2 -> relu2 -> pool -> fc; input ``(N, 3, 8, 8)``."""

    def __init__(self, n_out: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc(x.flatten(1))


class TwoInput(nn.Module):
    """``f(obs, goal)`` with two branches merged; returns ``(logits, value)``."""

    def __init__(self) -> None:
        super().__init__()
        self.obs_net = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.goal_net = nn.Sequential(nn.Linear(3, 16), nn.Tanh())
        self.policy = nn.Linear(16, 4)
        self.value = nn.Linear(16, 1)

    def forward(self, obs: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.obs_net(obs) * self.goal_net(goal)
        return self.policy(h), self.value(h)


class KwargModel(nn.Module):
    """HF-style: ``forward(input_ids=..., attention_mask=...)`` returning a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.lm_head = nn.Linear(8, 20)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.block(self.embed(input_ids)) * attention_mask[..., None]
        return {"logits": self.lm_head(h), "hidden": h}


def two_input_td_module() -> TensorDictModule:
    return TensorDictModule(TwoInput(), in_keys=["obs", "goal"], out_keys=["logits", "state_value"])


def two_input_td(batch: tuple[int, ...] = (5,), dtype=torch.float32) -> TensorDict:
    return TensorDict(
        {"obs": torch.randn(*batch, 6, dtype=dtype), "goal": torch.randn(*batch, 3, dtype=dtype)},
        batch_size=batch,
    )
