"""Latent methods: caching, patching, steering, probing, geometry and sparse autoencoders."""

from rlhook.latent.caching import ActivationCaching
from rlhook.latent.patching import (
    ActionLogProb,
    ActivationPatching,
    CategoricalKL,
    LogitDiff,
    NormalKL,
    PathPatching,
)

__all__ = [
    "ActionLogProb",
    "ActivationCaching",
    "ActivationPatching",
    "CategoricalKL",
    "LogitDiff",
    "NormalKL",
    "PathPatching",
]
