"""Plots saved as PNG (matplotlib, the ``plot`` extra): heatmaps, curves, board diagrams."""

from rlhook.plot.curves import probe_curves
from rlhook.plot.heatmap import heatmap, image_grid

__all__ = ["heatmap", "image_grid", "probe_curves"]
