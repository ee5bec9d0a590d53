"""Attribution methods: each is a ``Method``; products at ``("attr", ...)`` (see ``rlhook.attribution.base``)."""

from rlhook.attribution.base import GradientMethod
from rlhook.attribution.integrated import IntegratedGradients
from rlhook.attribution.saliency import InputXGradient, Saliency

__all__ = ["GradientMethod", "InputXGradient", "IntegratedGradients", "Saliency"]
