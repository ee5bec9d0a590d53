"""Plots saved as PNG (matplotlib, the ``plot`` extra): heatmaps, curves, board diagrams."""

from rlhook.plot.heatmap import heatmap, image_grid

__all__ = ["heatmap", "image_grid"]
