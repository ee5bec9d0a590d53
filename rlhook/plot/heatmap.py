"""Heatmaps: one matrix (time x feature, layer x quantity) or a grid of image-shaped attribution maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhook.extras import require

__all__ = ["finish_rows", "heatmap", "image_grid", "save_figure"]


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (the ``plot`` extra), for custom figures that
    :func:`save_figure` writes."""
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "plot")


def save_figure(fig: Any, path: str | Path, *, tight: bool = False) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders created) and close it; ``tight`` crops the margins."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, **({"bbox_inches": "tight", "pad_inches": 0.05} if tight else {}))
    pyplot().close(fig)
    return path


def heatmap(
    values: torch.Tensor,
    path: str | Path,
    *,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    ylabel: str = "",
    xlabel: str = "",
    title: str = "",
    diverging: bool = True,
) -> Path:
    """Save a 2-D tensor ``(rows, cols)`` as a heatmap PNG (symmetric colour scale when ``diverging``);
    e.g. a per-step attribution ``(time, features)`` transposed to features x time."""
    plt = pyplot()
    v = values.detach().float().cpu()
    if v.dim() != 2:
        raise ValueError(f"heatmap needs a 2-D tensor (rows, cols), got shape {tuple(v.shape)}")
    width = min(14.0, max(4.0, 0.5 * v.shape[1] + 2))
    fig, ax = plt.subplots(figsize=(width, min(8.0, max(3.0, 0.3 * v.shape[0] + 1.5))))
    lim = float(v.abs().max()) or 1.0
    kw = {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim} if diverging else {"cmap": "viridis"}
    im = ax.imshow(v.numpy(), aspect="auto", interpolation="nearest", **kw)
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), list(xlabels), rotation=45, ha="right")
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), list(ylabels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_figure(fig, path)


def finish_rows(
    fig: Any,
    axes: Any,
    images: Sequence[Any],
    *,
    row_titles: Sequence[str] | None,
    col_titles: Sequence[str] | None,
    colorbar_label: str,
    title: str,
    size: int = 8,
    fraction: float = 0.015,
) -> None:
    """Label a grid of map rows (``axes``: ``(N, 1 + K)``, inputs in column 0): one colour bar per row from
    ``images[i]`` (the row's last map), its label on the middle row, row and column titles (``col_titles``
    includes column 0's), no ticks, and ``title`` above; text at font ``size``."""
    n = len(images)
    for i, im in enumerate(images):
        cbar = fig.colorbar(im, ax=list(axes[i]), fraction=fraction, pad=0.01)
        cbar.ax.tick_params(labelsize=6)
        if i == n // 2:
            cbar.set_label(colorbar_label, fontsize=size)
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=size)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for j, t in enumerate(col_titles or []):
        axes[0, j].set_title(t, fontsize=size)
    if title:
        fig.suptitle(title, fontsize=size + 2)


def image_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    path: str | Path,
    *,
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    title: str = "",
    colorbar_label: str = "attribution",
) -> Path:
    """Save a grid: one row per example, its image then one attribution map per column.

    ``images``: ``(N, H, W)``; ``maps``: ``(N, K, H, W)`` (K targets), drawn on one symmetric colour scale
    per row, shown by the row's colour bar.
    """
    plt = pyplot()
    n, k = maps.shape[:2]
    fig, axes = plt.subplots(
        n, k + 1, figsize=(1.3 * (k + 1) + 0.9, 1.3 * n + (0.5 if title else 0.2)), squeeze=False
    )
    last = []
    for i in range(n):
        axes[i, 0].imshow(images[i].detach().cpu().numpy(), cmap="gray")
        lim = float(maps[i].abs().max()) or 1.0
        for j in range(k):
            im = axes[i, j + 1].imshow(maps[i, j].detach().cpu().numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
        last.append(im)
    columns = None if col_titles is None else ["input", *col_titles]
    finish_rows(
        fig, axes, last, row_titles=row_titles, col_titles=columns, colorbar_label=colorbar_label, title=title
    )
    return save_figure(fig, path, tight=True)
