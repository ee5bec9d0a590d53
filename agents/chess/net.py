"""A Leela-style SE-ResNet as one multi-head TensorDictModule: ``"board"`` planes in, policy and WDL out.

Submodule names follow lc0's weight fields, so one dotted path names the same activation in a net trained
here, one loaded from a ``.pb.gz`` and one exported again:

==========================  ================================================================
path                        what it computes (shapes for a batch of N, C filters)
==========================  ================================================================
``inputconv``               3x3 conv 112->C + BN + activation -> (N, C, 8, 8)
``block{i}``                residual block output, after the final activation -> (N, C, 8, 8)
``block{i}.conv1``          3x3 conv + BN + activation (``.conv``, ``.bn``, ``.act`` inside)
``block{i}.conv2``          3x3 conv + BN, no activation
``block{i}.se``             squeeze-excitation: sigmoid(gamma) * x + beta, gamma/beta from the pooled x
``policy1``                 3x3 conv C->C + BN + activation
``policy``                  3x3 conv C->80 with bias: the raw (N, 80, 8, 8) conv-policy planes
``value``                   1x1 conv C->32 + BN + activation; ``ip1_val`` 2048->128 (+ ``ip1_val_act``);
                            ``ip2_val`` 128->3: WDL logits
``moves_left``              optional moves-left head: 1x1 conv C->8 + BN + act, ``ip1_mov``, ``ip2_mov``
==========================  ================================================================

Outputs written into the TensorDict: ``"policy"`` (N, 1858) logits in lc0's move index
(:mod:`envs.chess.moves`), ``"wdl"`` (N, 3) logits of win/draw/loss for the side to move (softmax them for
probabilities; value = W - L), and ``"mlh"`` (N, 1) predicted plies left when the net has that head.
Leading batch dimensions of any shape are kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from agents import checkpoints
from envs.chess.moves import CONV_GATHER, CONV_PLANES

__all__ = [
    "LeelaConfig",
    "ConvBN",
    "SqueezeExcite",
    "ResidualBlock",
    "LeelaNet",
    "load_checkpoint",
    "save_checkpoint",
]

BN_EPS = 1e-5


@dataclass
class LeelaConfig:
    """Architecture of a :class:`LeelaNet`.

    ``se_ratio`` = 0 builds blocks without squeeze-excitation (lc0 ``NETWORK_CLASSICAL``); otherwise the SE
    hidden width is ``filters // se_ratio``. ``activation`` is ``"relu"`` or ``"mish"``.
    """

    blocks: int = 6
    filters: int = 32
    se_ratio: int = 4
    input_planes: int = 112
    value_channels: int = 32
    value_hidden: int = 128
    moves_left: bool = False
    mlh_channels: int = 8
    mlh_hidden: int = 128
    activation: str = "relu"


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "mish":
        return nn.Mish()
    raise ValueError(f"unknown activation {name!r}; expected 'relu' or 'mish'")


class ConvBN(nn.Module):
    """lc0's ConvBlock: ``conv`` (no bias) + ``bn`` (eps 1e-5) + optional ``act``; (N, Cin, 8, 8) -> (N, Cout, 8, 8)."""

    def __init__(self, cin: int, cout: int, kernel: int, activation: str | None = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = _activation(activation) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """lc0's SE unit: mean over squares -> ``fc1`` C->s -> act -> ``fc2`` s->2C = (gamma, beta);
    returns ``sigmoid(gamma) * x + beta``. (N, C, 8, 8) -> (N, C, 8, 8)."""

    def __init__(self, channels: int, hidden: int, activation: str = "relu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = _activation(activation)
        self.fc2 = nn.Linear(hidden, 2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3))))).chunk(2, dim=1)
        return torch.sigmoid(gamma)[..., None, None] * x + beta[..., None, None]


class ResidualBlock(nn.Module):
    """``act(x + se(conv2(conv1(x))))``; (N, C, 8, 8) -> (N, C, 8, 8)."""

    def __init__(self, channels: int, se_hidden: int, activation: str = "relu") -> None:
        super().__init__()
        self.conv1 = ConvBN(channels, channels, 3, activation)
        self.conv2 = ConvBN(channels, channels, 3, None)
        self.se = SqueezeExcite(channels, se_hidden, activation) if se_hidden else nn.Identity()
        self.act = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.se(self.conv2(self.conv1(x))))


class LeelaNet(TensorDictModuleBase):
    """SE-ResNet with a conv policy head (1858 logits), a WDL head and an optional moves-left head.

    Reads ``in_keys = ["board"]``: (..., 112, 8, 8) float planes (:mod:`envs.chess.planes`); writes
    ``out_keys = ["policy", "wdl"]`` (+ ``"mlh"``). :meth:`heads` gives the same on plain tensors.
    ``history_fill`` names the planes' history fill the net expects (``"zeros"`` for nets trained here; a
    net read from an lc0 file gets lc0's ``"fen_only"``); pass it to ``board_to_planes(board, fill)``.
    """

    history_fill: str = "zeros"

    def __init__(self, config: LeelaConfig | None = None, **overrides) -> None:
        super().__init__()
        config = LeelaConfig(**{**asdict(config or LeelaConfig()), **overrides})
        self.config = config
        c, act = config.filters, config.activation
        self.in_keys = ["board"]
        self.out_keys = ["policy", "wdl"] + (["mlh"] if config.moves_left else [])
        self.inputconv = ConvBN(config.input_planes, c, 3, act)
        se_hidden = c // config.se_ratio if config.se_ratio else 0
        for i in range(config.blocks):
            self.add_module(f"block{i}", ResidualBlock(c, se_hidden, act))
        self.policy1 = ConvBN(c, c, 3, act)
        self.policy = nn.Conv2d(c, CONV_PLANES, 3, padding=1)
        self.value = ConvBN(c, config.value_channels, 1, act)
        self.ip1_val = nn.Linear(config.value_channels * 64, config.value_hidden)
        self.ip1_val_act = _activation(act)
        self.ip2_val = nn.Linear(config.value_hidden, 3)
        if config.moves_left:
            self.moves_left = ConvBN(c, config.mlh_channels, 1, act)
            self.ip1_mov = nn.Linear(config.mlh_channels * 64, config.mlh_hidden)
            self.ip1_mov_act = _activation(act)
            self.ip2_mov = nn.Linear(config.mlh_hidden, 1)
        self.register_buffer("conv_gather", CONV_GATHER.clone(), persistent=False)

    @property
    def residual_blocks(self) -> list[ResidualBlock]:
        """The tower's blocks in order (``block0`` first)."""
        return [getattr(self, f"block{i}") for i in range(self.config.blocks)]

    def heads(self, board: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., 112, 8, 8) planes -> ``{"policy": (..., 1858), "wdl": (..., 3)[, "mlh": (..., 1)]}``."""
        lead = board.shape[:-3]
        x = self.inputconv(board.reshape(-1, *board.shape[-3:]))
        for block in self.residual_blocks:
            x = block(x)
        policy = self.policy(self.policy1(x)).flatten(1)[:, self.conv_gather]
        v = self.value(x).flatten(1)
        out = {"policy": policy, "wdl": self.ip2_val(self.ip1_val_act(self.ip1_val(v)))}
        if self.config.moves_left:
            m = self.moves_left(x).flatten(1)
            out["mlh"] = F.relu(self.ip2_mov(self.ip1_mov_act(self.ip1_mov(m))))
        return {k: t.reshape(*lead, t.shape[-1]) for k, t in out.items()}

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        out = self.heads(tensordict.get(self.in_keys[0]))
        for key, name in zip(self.out_keys, out):
            tensordict.set(key, out[name])
        return tensordict


def save_checkpoint(net: LeelaNet, path: str | Path, **meta) -> None:
    """Write ``{"config", "state_dict", "meta"}`` with ``torch.save``; loadable with ``weights_only=True``."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save({"config": asdict(net.config), "state_dict": state, "meta": dict(meta)}, path)
    checkpoints.record(path)


def load_checkpoint(path: str | Path) -> LeelaNet:
    """Rebuild a :class:`LeelaNet` in eval mode from :func:`save_checkpoint`'s file (``net.meta`` holds meta)."""
    ckpt = checkpoints.load(path)  # digest-checked when shipped
    net = LeelaNet(LeelaConfig(**ckpt["config"]))
    net.load_state_dict(ckpt["state_dict"])
    net.meta = ckpt.get("meta", {})
    return net.eval()
