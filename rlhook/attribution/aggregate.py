"""Targets with one value for the whole batch (``rlhook.targets.Aggregate``): which methods explain them and how
their forwards are laid out (one whole batch per forward)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhook.targets import is_aggregate

if TYPE_CHECKING:
    from rlhook.attribution.base import GradientMethod

__all__ = ["AGGREGATE_METHODS", "check_aggregate", "whole_batches"]

AGGREGATE_METHODS = (
    "Saliency, InputXGradient, IntegratedGradients, GuidedBackprop, Deconvolution, GradCAM, FeatureAblation, "
    "Occlusion, ShapleyValueSampling, ShapleyValues, KernelShap, Lime, FeaturePermutation"
)


def check_aggregate(method: GradientMethod) -> None:
    """Refuse an ``Aggregate`` target on a method that needs one target value per example."""
    if is_aggregate(method.options.target) and not type(method).aggregate:
        raise ValueError(
            f"{type(method).__name__} needs one target value per example and cannot explain "
            f"{method.options.target!r} (one value for the whole batch): explain a per-example target "
            f"(drop Aggregate, e.g. the per-example loss), or use one of {AGGREGATE_METHODS}"
        )


def whole_batches(n_ex: int, n_rows: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """Row ranges of an ``Aggregate`` target: exactly one batch (``n_ex`` rows) per forward."""
    if chunk_size is not None and chunk_size < n_ex:
        raise ValueError(
            f"chunk_size={chunk_size} is below the batch of {n_ex} rows: an Aggregate target is one value of the "
            "whole batch, so each forward must hold the whole batch (raise chunk_size, or split the batch)"
        )
    return [(s, s + n_ex) for s in range(0, n_rows, max(n_ex, 1))]
