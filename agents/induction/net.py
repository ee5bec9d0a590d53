"""The induction model: a small pre-LayerNorm, attention-only transformer with a module per hook point.

Every quantity a circuit analysis names is a module output, so rlhook paths reach it:
``blocks.{l}.attn.pattern`` (attention probabilities ``(B, H, T, T)``), ``blocks.{l}.attn.z`` (per-head
outputs ``(B, T, H, d_head)``), ``blocks.{l}.attn`` (attention output added to the residual stream),
``blocks.{l}`` (residual stream after block ``l``), ``embed``/``pos`` (token and position embeddings).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["Config", "InductionNet", "repeated_tokens"]


@dataclass
class Config:
    vocab: int = 48
    length: int = 25  # tokens per sequence: [BOS, filler, x, x, filler] with x of a random length
    min_repeat: int = 4
    max_repeat: int = 12
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2


class Pattern(nn.Module):
    """Causal attention probabilities ``softmax(q k^T / sqrt(d_head))``: ``(B, H, T, T)``."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        t = q.shape[-2]
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        return scores.masked_fill(mask, float("-inf")).softmax(-1)


class Attention(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.h, self.dh = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.pattern = Pattern()
        self.z = nn.Identity()  # per-head outputs (B, T, H, d_head)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # (B, H, T, dh) each
        z = self.z((self.pattern(q, k) @ v).transpose(1, 2))  # (B, T, H, dh)
        return self.out(z.reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.ln(x))


class InductionNet(nn.Module):
    """Token ids ``(B, T)`` -> next-token logits ``(B, T, vocab)``."""

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Config()
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.length, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))

    def config(self) -> dict:
        return asdict(self.cfg)


def repeated_tokens(
    n: int, cfg: Config, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, first, mask)``: ``(n, length)`` sequences ``[BOS, filler, x, x, filler]`` of random tokens where
    ``x`` has a random length and offset (so only an induction circuit, not a positional one, predicts the
    second copy); ``first`` ``(n, length)`` marks the first copy; ``mask`` ``(n, length - 1)`` marks the
    predictions the second copy makes possible (the loss positions). Token 0 is BOS and appears nowhere else."""
    ids = torch.randint(1, cfg.vocab, (n, cfg.length), generator=generator)
    ids[:, 0] = 0
    reps = torch.randint(cfg.min_repeat, cfg.max_repeat + 1, (n,), generator=generator)
    room = cfg.length - 1 - 2 * reps
    starts = 1 + (torch.rand(n, generator=generator) * (room + 1)).long()
    pos = torch.arange(cfg.length)
    first = (pos >= starts[:, None]) & (pos < (starts + reps)[:, None])
    second = (pos >= (starts + reps)[:, None]) & (pos < (starts + 2 * reps)[:, None])
    ids[second] = ids[first]
    # the prediction at p is of token p + 1: predictable for p + 1 in the second copy, after its first token
    mask = second[:, 1:] & ~(pos[1:] == (starts + reps)[:, None])
    return ids, first, mask.float()
