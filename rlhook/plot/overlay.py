"""Heatmaps drawn over the images they explain: one row per image, one column per map (class, concept)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rlhook.plot.heatmap import finish_rows, pyplot, save_figure

__all__ = ["overlay_grid"]


def _rgb(image: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` or ``(H, W)`` -> ``(H, W, 3)`` in ``[0, 1]`` (min-max scaled when outside it)."""
    img = image.detach().float().cpu()
    img = img.unsqueeze(0) if img.dim() == 2 else img
    img = img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]
    lo, hi = img.min(), img.max()
    if lo < 0 or hi > 1:
        img = (img - lo) / (hi - lo).clamp_min(1e-12)
    return img.permute(1, 2, 0)


def overlay_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    path: str | Path,
    *,
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    title: str = "",
    alpha: float = 0.6,
    colorbar_label: str = "relevance",
) -> Path:
    """Save a PNG grid: row ``i`` shows image ``i`` then each of its ``K`` maps over a grey copy of it.

    ``images``: ``(N, C, H, W)`` (C = 1 or 3) or ``(N, H, W)``; ``maps``: ``(N, K, H, W)`` (relevance summed
    over channels beforehand). Each row uses one symmetric colour scale (red positive, blue negative) shown by
    the row's colour bar.
    """
    if (
        maps.dim() != 4
        or images.shape[0] != maps.shape[0]
        or tuple(images.shape[-2:]) != tuple(maps.shape[-2:])
    ):
        raise ValueError(
            f"overlay_grid needs images (N, C, H, W) and maps (N, K, H, W) of the same N, H, W; got "
            f"{tuple(images.shape)} and {tuple(maps.shape)}"
        )
    plt = pyplot()
    n, k = maps.shape[:2]
    fig, axes = plt.subplots(n, k + 1, figsize=(1.6 * (k + 1) + 0.8, 1.6 * n + 0.6), squeeze=False)
    last = []
    for i in range(n):
        rgb = _rgb(images[i])
        axes[i, 0].imshow(rgb.numpy(), interpolation="nearest")
        grey = rgb.mean(-1).numpy()
        v = maps[i].detach().float().cpu()
        lim = float(v.abs().max()) or 1.0
        for j in range(k):
            axes[i, j + 1].imshow(grey, cmap="gray", interpolation="nearest")
            im = axes[i, j + 1].imshow(
                v[j].numpy(), cmap="bwr", vmin=-lim, vmax=lim, alpha=alpha, interpolation="nearest"
            )
        last.append(im)
    finish_rows(
        fig,
        axes,
        last,
        row_titles=row_titles,
        col_titles=["input", *(col_titles or [])],
        colorbar_label=colorbar_label,
        title=title,
        size=7,
        fraction=0.02,
    )
    return save_figure(fig, path, tight=True)
