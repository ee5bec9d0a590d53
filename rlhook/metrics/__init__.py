"""Faithfulness and behaviour metrics for any attribution; results at ``("metrics", name)``."""

from rlhook.metrics.behaviour import masked_behaviour
from rlhook.metrics.completeness import completeness
from rlhook.metrics.curves import deletion_curve, insertion_curve
from rlhook.metrics.infidelity import infidelity
from rlhook.metrics.sensitivity import max_sensitivity

__all__ = [
    "completeness",
    "deletion_curve",
    "infidelity",
    "insertion_curve",
    "masked_behaviour",
    "max_sensitivity",
]
