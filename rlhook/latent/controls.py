"""Probes with their controls, on activations you already have: one function for training loops, reports and
users.

A probe score alone says little: a random network, or the input itself, is often already a rich feature map,
and a flexible probe can fit noise. ``probe_with_controls`` fits the same probe on every feature set given
(the trained network's layers next to control feature sets such as ``"random_init"`` or ``"raw_obs"``) and, with
``shuffled=True``, on labels permuted over the training rows (a control task whose score should be at chance).
It runs ``Probing`` on ``("cache", layer)`` entries, so no model is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict

from rlhook.latent.probing import Probing
from rlhook.latent.scores import DEFAULT_METRICS, Task

__all__ = ["probe_with_controls", "split_rows"]


def split_rows(n: int, test_fraction: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)`` row indices of a seeded random split of ``n`` rows."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(n * test_fraction))
    return perm[n_test:], perm[:n_test]


def probe_with_controls(
    features: Mapping[str, Mapping[str, torch.Tensor]],
    labels: Mapping[str, torch.Tensor],
    *,
    train: torch.Tensor,
    test: torch.Tensor,
    task: Task = "regression",
    estimator: Any = None,
    alpha: float = 1.0,
    C: float = 1.0,
    metric: str | None = None,
    shuffled: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Fit and score one probe per (feature set, layer, quantity), with a shuffled-label control.

    Args:
        features: ``{feature set: {layer: activations (N, ...)}}``, e.g. ``{"trained": ..., "random_init": ...,
            "raw_obs": {"observation": obs}}``; rows are flattened to ``(N, features)``.
        labels: ``{quantity: (N,) or (N, k)}`` (integer classes for ``task="classification"``).
        train, test: row indices (or boolean masks) of the fit and of the score.
        task, estimator, alpha, C: as in ``Probing`` (ridge / logistic by default).
        metric: the score reported (default ``r2`` or ``balanced_accuracy``).
        shuffled: also fit on labels permuted over the training rows (``seed``).

    Returns tidy rows ``{"features", "layer", "quantity", "metric", "score", "shuffled", "probe"}``
    (``shuffled`` is ``None`` without the control; ``probe`` is the fitted estimator).
    """
    metric = metric or ("r2" if task == "regression" else "balanced_accuracy")
    if metric not in DEFAULT_METRICS[task] and not (task == "classification" and metric == "accuracy"):
        raise ValueError(
            f"metric {metric!r} does not score task {task!r}; use one of {DEFAULT_METRICS[task]}"
        )
    rows = []
    for fname, layers in features.items():
        n = {len(v) for v in layers.values()} | {len(y) for y in labels.values()}
        if len(n) != 1:
            raise ValueError(
                f"feature set {fname!r}: layers and labels need the same number of rows, got {n}"
            )
        for quantity, y in labels.items():
            td = TensorDict({"cache": dict(layers), "labels": y}, batch_size=[len(y)])
            probing = Probing(
                list(layers),
                task=task,
                estimator=estimator,
                alpha=alpha,
                C=C,
                metrics=(metric,),
                control=shuffled,
                seed=seed,
            )
            probing.fit(td[train])
            scored = probing.score(td[test])
            for layer in layers:
                rows.append(
                    {
                        "features": fname,
                        "layer": layer,
                        "quantity": quantity,
                        "metric": metric,
                        "score": float(scored["probe", layer, metric][0]),
                        "shuffled": float(scored["probe", layer, "control_" + metric][0])
                        if shuffled
                        else None,
                        "probe": probing.probes[layer],
                    }
                )
    return rows
