"""Probe scores (as scikit-learn computes them) and the row layout probes fit on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

__all__ = [
    "Task",
    "r2",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "per_class",
    "rows",
    "METRICS",
    "DEFAULT_METRICS",
]

Task = Literal["regression", "classification"]


def r2(y: torch.Tensor, pred: torch.Tensor) -> float:
    """Coefficient of determination, averaged uniformly over output columns (as scikit-learn's ``r2_score``)."""
    y, pred = y.double().reshape(len(y), -1), pred.double().reshape(len(pred), -1)
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    score = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), (ss_res == 0).double())
    return float(score.mean())


def accuracy(y: torch.Tensor, pred: torch.Tensor) -> float:
    """Fraction of exact label matches."""
    return float((y.reshape(-1) == pred.reshape(-1)).double().mean())


def per_class(
    y: torch.Tensor, pred: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    y, pred = y.reshape(-1).long(), pred.reshape(-1).long()
    classes = torch.unique(torch.cat([y, pred]))
    tp = ((y[:, None] == classes) & (pred[:, None] == classes)).sum(0).double()
    n_true = (y[:, None] == classes).sum(0).double()
    n_pred = (pred[:, None] == classes).sum(0).double()
    return classes, tp, n_true, n_pred


def balanced_accuracy(y: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean recall over the classes present in ``y``."""
    _, tp, n_true, _ = per_class(y, pred)
    present = n_true > 0
    return float((tp[present] / n_true[present]).mean())


def f1(y: torch.Tensor, pred: torch.Tensor) -> float:
    """F1 of class 1 for binary 0/1 labels, macro-averaged F1 otherwise (scikit-learn's defaults)."""
    classes, tp, n_true, n_pred = per_class(y, pred)
    per = torch.where(n_true + n_pred > 0, 2 * tp / (n_true + n_pred).clamp_min(1), torch.zeros_like(tp))
    if set(classes.tolist()) <= {0, 1} and len(torch.unique(y)) <= 2:
        return float(per[classes == 1].sum())
    return float(per.mean())


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "r2": r2,
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "f1": f1,
}
DEFAULT_METRICS = {"regression": ("r2",), "classification": ("accuracy", "balanced_accuracy", "f1")}


def rows(x: torch.Tensor, batch_dims: int = 1) -> torch.Tensor:
    """``(N, features)``: batch dims flattened into rows, the rest into features."""
    n = 1
    for s in x.shape[:batch_dims]:
        n *= s
    return x.reshape(n, -1)
