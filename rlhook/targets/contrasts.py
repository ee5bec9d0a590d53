"""Contrast targets and divergences for patching: a logit difference, and KLs between two runs' policies.

``LogitDiff`` is a target (one output TensorDict -> one number per example); ``CategoricalKL`` and
``NormalKL`` are divergences ``(clean_td, patched_td) -> Tensor(batch)``.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.keys import get_key

__all__ = ["LogitDiff", "CategoricalKL", "NormalKL"]


class LogitDiff:
    """``logits[..., a] - logits[..., b]``; ``a``/``b`` are class indices or keys of per-example indices."""

    def __init__(self, a: int | NestedKey, b: int | NestedKey, key: NestedKey = "output") -> None:
        self.a, self.b, self.key = a, b, key

    def _pick(self, out: TensorDictBase, logits: torch.Tensor, c: int | NestedKey) -> torch.Tensor:
        if isinstance(c, int):
            return logits[..., c]
        idx = get_key(out, c, what="class index").long()
        return logits.gather(-1, idx.reshape(*logits.shape[:-1], 1)).squeeze(-1)

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        logits = get_key(out, self.key, what="logits")
        return self._pick(out, logits, self.a) - self._pick(out, logits, self.b)

    def __repr__(self) -> str:
        return f"LogitDiff({self.a!r}, {self.b!r}, key={self.key!r})"


class CategoricalKL:
    """``KL(clean || patched)`` of categorical policies given by logits at ``key``; shape ``batch``."""

    def __init__(self, key: NestedKey = "logits") -> None:
        self.key = key

    def __call__(self, clean: TensorDictBase, patched: TensorDictBase) -> torch.Tensor:
        p = torch.log_softmax(get_key(clean, self.key, what="logits").double(), -1)
        q = torch.log_softmax(get_key(patched, self.key, what="logits").double(), -1)
        return (p.exp() * (p - q)).sum(-1).to(get_key(clean, self.key).dtype)


class NormalKL:
    """``KL(clean || patched)`` of diagonal Gaussian policies (``loc``, ``scale`` keys), summed over action dims."""

    def __init__(self, loc: NestedKey = "loc", scale: NestedKey = "scale") -> None:
        self.loc, self.scale = loc, scale

    def __call__(self, clean: TensorDictBase, patched: TensorDictBase) -> torch.Tensor:
        m0, s0 = get_key(clean, self.loc), get_key(clean, self.scale)
        m1, s1 = get_key(patched, self.loc), get_key(patched, self.scale)
        kl = torch.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5
        return kl.reshape(*kl.shape[: clean.batch_dims], -1).sum(-1)
