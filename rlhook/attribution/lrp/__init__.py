"""Layer-wise relevance propagation: rules, composites (rule maps), canonizers and the ``LRP`` method."""

from rlhook.attribution.lrp.canonizers import Canonizer, MergeBatchNorm
from rlhook.attribution.lrp.composite import Composite, Sum
from rlhook.attribution.lrp.method import LRP
from rlhook.attribution.lrp.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    Pass,
    Residual,
    Rule,
    WSquare,
    ZPlus,
)
from rlhook.attribution.lrp.transformer import ConstantAttention, ConstantNormScale

__all__ = [
    "LRP",
    "AlphaBeta",
    "Canonizer",
    "Composite",
    "ConstantAttention",
    "ConstantNormScale",
    "Epsilon",
    "Flat",
    "Gamma",
    "MergeBatchNorm",
    "Norm",
    "Pass",
    "Residual",
    "Rule",
    "Sum",
    "WSquare",
    "ZPlus",
]
