"""Attribution methods: each is a ``Method``; products at ``("attr", ...)`` (see ``rlhook.attribution.base``)."""

from rlhook.attribution.attribution_patching import AttributionPatching
from rlhook.attribution.base import GradientMethod
from rlhook.attribution.conductance import LayerConductance, NeuronConductance
from rlhook.attribution.deeplift import DeepLift, DeepLiftShap
from rlhook.attribution.feature_permutation import FeaturePermutation
from rlhook.attribution.gradcam import GradCAM
from rlhook.attribution.gradient_shap import ExpectedGradients, GradientSHAP
from rlhook.attribution.guided import Deconvolution, GuidedBackprop
from rlhook.attribution.guided_gradcam import GuidedGradCAM
from rlhook.attribution.inputs import set_baselines
from rlhook.attribution.integrated import IntegratedGradients
from rlhook.attribution.lime import KernelShap, Lime
from rlhook.attribution.lrp import LRP, Composite, ConceptRelevance, MergeBatchNorm
from rlhook.attribution.neuron import Neuron
from rlhook.attribution.noise_tunnel import NoiseTunnel, SmoothGrad, SmoothGradSquared, VarGrad
from rlhook.attribution.occlusion import FeatureAblation, Occlusion
from rlhook.attribution.perturbation import PerturbationSaliency
from rlhook.attribution.relevance_patching import RelevancePatching
from rlhook.attribution.saliency import InputXGradient, Saliency
from rlhook.attribution.shapley import ShapleyValues, ShapleyValueSampling

__all__ = [
    "AttributionPatching",
    "Composite",
    "ConceptRelevance",
    "Deconvolution",
    "DeepLift",
    "DeepLiftShap",
    "ExpectedGradients",
    "FeatureAblation",
    "FeaturePermutation",
    "GradientMethod",
    "GradCAM",
    "GradientSHAP",
    "GuidedBackprop",
    "GuidedGradCAM",
    "InputXGradient",
    "IntegratedGradients",
    "KernelShap",
    "LRP",
    "LayerConductance",
    "Lime",
    "MergeBatchNorm",
    "Neuron",
    "NeuronConductance",
    "NoiseTunnel",
    "Occlusion",
    "PerturbationSaliency",
    "RelevancePatching",
    "Saliency",
    "ShapleyValueSampling",
    "ShapleyValues",
    "SmoothGrad",
    "SmoothGradSquared",
    "VarGrad",
    "set_baselines",
]
