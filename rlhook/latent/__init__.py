"""Latent methods: caching, patching, steering, probing, geometry and sparse autoencoders."""

from rlhook.latent.caching import ActivationCaching
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
from rlhook.latent.patching import (
    ActionLogProb,
    ActivationPatching,
    CategoricalKL,
    LogitDiff,
    NormalKL,
    PathPatching,
)
from rlhook.latent.probing import (
    TCAV,
    BilinearProbe,
    LogisticProbe,
    Probing,
    RidgeProbe,
    accuracy,
    balanced_accuracy,
    f1,
    r2,
)
from rlhook.latent.sae import SAESplice, SparseAutoencoder, train_sae
from rlhook.latent.steering import ActivationAddition, SteeringState, SteeringVectors, vectors_from

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
    "RidgeProbe",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "r2",
    "ActivationAddition",
    "SteeringState",
    "SteeringVectors",
    "vectors_from",
    "ActionLogProb",
    "ActivationCaching",
    "ActivationPatching",
    "CategoricalKL",
    "LogitDiff",
    "NormalKL",
    "PathPatching",
]
