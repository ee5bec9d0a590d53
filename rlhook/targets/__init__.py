"""Targets: what an attribution (or a gradient save) explains.

A target is

- an output key (``"state_value"``, ``("next", "reward")``): the tensor at that key;
- a callable ``outputs_td -> Tensor | TensorDict``;
- a preset from this module, e.g. ``ClassLogit(3)`` or ``ClassLogit(labels="labels")``, or one of the RL
  presets that work on TorchRL actors and critics: ``ActionLogProb`` (log-probability of the taken action
  under the policy distribution: TanhNormal, Normal, Categorical, masked Categorical ...), ``DistParams``
  (loc, scale ...), ``Entropy``, ``StateValue``, ``ActionValue`` (Q(s, a) of the taken action),
  ``KLToReference`` (KL to a reference policy) and ``WDL`` (chess win/draw/loss outcomes). Prepare methods
  that explain the taken action on ``policy_params(actor)``: a full actor samples and overwrites it.

A target that returns a TensorDict of K entries explains K things at once (one map each). Every target
tensor is reduced to one number per example by summing the dimensions after the batch dimensions, so a
target of shape ``batch + (d,)`` explains the sum of its ``d`` entries. ``Aggregate(target)`` explains one
value for the whole batch (a loss over the batch; captum's aggregate mode).
"""

from rlhook.targets.contrasts import CategoricalKL, LogitDiff, NormalKL
from rlhook.targets.core import (
    SINGLE,
    Aggregate,
    ClassLogit,
    OutputKey,
    Target,
    as_callable,
    evaluate,
    is_aggregate,
)
from rlhook.targets.outcomes import WDL
from rlhook.targets.policy import (
    ActionLogProb,
    ActionValue,
    DistParams,
    Entropy,
    KLToReference,
    StateValue,
    policy_params,
)

__all__ = [
    "Target",
    "ClassLogit",
    "Aggregate",
    "is_aggregate",
    "OutputKey",
    "as_callable",
    "evaluate",
    "SINGLE",
    "ActionLogProb",
    "ActionValue",
    "DistParams",
    "Entropy",
    "KLToReference",
    "StateValue",
    "WDL",
    "policy_params",
    "LogitDiff",
    "CategoricalKL",
    "NormalKL",
]
