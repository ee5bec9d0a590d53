"""Layer-wise relevance propagation: rules, composites (rule maps), canonizers, the ``LRP`` method and concept
relevance propagation (``ConceptRelevance``)."""

from rlhook.attribution.lrp.canonizers import Canonizer, MergeBatchNorm
from rlhook.attribution.lrp.composite import Composite, Sum
from rlhook.attribution.lrp.crp import ConceptRelevance, top_examples
from rlhook.attribution.lrp.method import LRP
from rlhook.attribution.lrp.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    Pass,
    ReLUBetaSmooth,
    ReLUDeconvNet,
    ReLUGuidedBackprop,
    Residual,
    Rule,
    WSquare,
    ZBox,
    ZPlus,
)
from rlhook.attribution.lrp.transformer import ConstantAttention, ConstantNormScale

__all__ = [
    "LRP",
    "AlphaBeta",
    "Canonizer",
    "Composite",
    "ConceptRelevance",
    "ConstantAttention",
    "ConstantNormScale",
    "Epsilon",
    "Flat",
    "Gamma",
    "MergeBatchNorm",
    "Norm",
    "Pass",
    "ReLUBetaSmooth",
    "ReLUDeconvNet",
    "ReLUGuidedBackprop",
    "Residual",
    "Rule",
    "Sum",
    "WSquare",
    "ZBox",
    "ZPlus",
    "top_examples",
]
