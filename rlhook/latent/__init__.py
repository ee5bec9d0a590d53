"""Latent methods: caching, patching, steering, probing, geometry and sparse autoencoders.

Patching targets and divergences (``LogitDiff``, ``CategoricalKL``, ``NormalKL``) and ``ActionLogProb`` live in
``rlhook.targets`` with the other targets.
"""

from rlhook.latent.caching import ActivationCaching
from rlhook.latent.controls import probe_with_controls, split_rows
from rlhook.latent.estimators import BilinearProbe, LogisticProbe, RidgeProbe
from rlhook.latent.geometry import (
    information_imbalance,
    linear_cka,
    local_pca,
    mle_dimension,
    rbf_cka,
    representations,
    similarity_matrix,
    two_nn,
)
from rlhook.latent.patching import ActivationPatching
from rlhook.latent.path_patching import PathPatching
from rlhook.latent.probing import Probing
from rlhook.latent.sae import SAESplice, SparseAutoencoder, train_sae
from rlhook.latent.scores import accuracy, balanced_accuracy, f1, r2
from rlhook.latent.steering import ActivationAddition, SteeringState, SteeringVectors, vectors_from
from rlhook.latent.tcav import TCAV

__all__ = [
    "SAESplice",
    "SparseAutoencoder",
    "train_sae",
    "information_imbalance",
    "linear_cka",
    "local_pca",
    "mle_dimension",
    "rbf_cka",
    "representations",
    "similarity_matrix",
    "two_nn",
    "TCAV",
    "BilinearProbe",
    "LogisticProbe",
    "Probing",
    "probe_with_controls",
    "split_rows",
    "RidgeProbe",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "r2",
    "ActivationAddition",
    "SteeringState",
    "SteeringVectors",
    "vectors_from",
    "ActivationCaching",
    "ActivationPatching",
    "PathPatching",
]
