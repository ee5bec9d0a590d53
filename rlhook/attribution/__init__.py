"""Attribution methods: each is a ``Method``; products at ``("attr", ...)`` (see ``rlhook.attribution.base``)."""

from rlhook.attribution.attribution_patching import AttributionPatching
from rlhook.attribution.base import GradientMethod
from rlhook.attribution.gradcam import GradCAM
from rlhook.attribution.gradient_shap import ExpectedGradients, GradientSHAP
from rlhook.attribution.guided import GuidedBackprop
from rlhook.attribution.integrated import IntegratedGradients
from rlhook.attribution.lrp import LRP, Composite, MergeBatchNorm
from rlhook.attribution.noise_tunnel import NoiseTunnel, SmoothGrad, SmoothGradSquared, VarGrad
from rlhook.attribution.occlusion import FeatureAblation, Occlusion
from rlhook.attribution.perturbation import PerturbationSaliency
from rlhook.attribution.relevance_patching import RelevancePatching
from rlhook.attribution.saliency import InputXGradient, Saliency

__all__ = [
    "AttributionPatching",
    "Composite",
    "ExpectedGradients",
    "FeatureAblation",
    "GradientMethod",
    "GradCAM",
    "GradientSHAP",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "LRP",
    "MergeBatchNorm",
    "NoiseTunnel",
    "Occlusion",
    "PerturbationSaliency",
    "RelevancePatching",
    "Saliency",
    "SmoothGrad",
    "SmoothGradSquared",
    "VarGrad",
]
