"""Plots saved as PNG (matplotlib, the ``plot`` extra): heatmaps, curves, board diagrams."""

from rlhook.plot.board import board_grid, board_heatmap
from rlhook.plot.curves import probe_curves
from rlhook.plot.heatmap import heatmap, image_grid, pyplot, save_figure
from rlhook.plot.overlay import overlay_grid

__all__ = [
    "board_grid",
    "board_heatmap",
    "heatmap",
    "image_grid",
    "overlay_grid",
    "probe_curves",
    "pyplot",
    "save_figure",
]
