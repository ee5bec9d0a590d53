"""Conveniences for model families over the same core: vision (ResNet canonizer, image baselines) and
language (Hugging Face causal LMs; imported on demand: ``rlhook.adapters.language``)."""

from rlhook.adapters.vision import ResNetCanonizer, image_baseline, residual_blocks

__all__ = ["ResNetCanonizer", "image_baseline", "residual_blocks"]
