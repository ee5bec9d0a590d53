"""The few TorchRL pieces rlhook.rl uses, imported lazily (the ``rl`` extra)."""

from __future__ import annotations

from contextlib import AbstractContextManager

from rlhook.extras import require

__all__ = ["exploration"]

_TYPES = {"deterministic": "DETERMINISTIC", "mode": "MODE", "mean": "MEAN", "random": "RANDOM"}


def exploration(kind: str) -> AbstractContextManager:
    """``torchrl.envs.utils.set_exploration_type`` for ``"deterministic"``, ``"mode"``, ``"mean"``, ``"random"``."""
    if kind not in _TYPES:
        raise ValueError(f"exploration type must be one of {list(_TYPES)}, not {kind!r}")
    utils = require("torchrl.envs.utils", "rl")
    return utils.set_exploration_type(getattr(utils.ExplorationType, _TYPES[kind]))
