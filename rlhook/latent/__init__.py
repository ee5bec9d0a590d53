"""Latent methods: caching, patching, steering, probing."""

from rlhook.latent.caching import ActivationCaching

__all__ = ["ActivationCaching"]
