"""TorchRL integration (the ``rl`` extra): recorders for collectors, attribution on batches and inside loss
modules, probing while training, and closed-loop interventions."""

from rlhook.rl.explain import ExplainBatch
from rlhook.rl.interventions import Ablation, paired_rollouts
from rlhook.rl.loss import LossAttribution, loss_networks
from rlhook.rl.probes import TrainingProbes
from rlhook.rl.recorder import Recorder

__all__ = [
    "Ablation",
    "ExplainBatch",
    "LossAttribution",
    "Recorder",
    "TrainingProbes",
    "loss_networks",
    "paired_rollouts",
]
