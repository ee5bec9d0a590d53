"""Lag x feature figures for time-unrolled attributions (``rlhook.rl.unrolled``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rlhook.plot.heatmap import pyplot, save_figure

__all__ = ["lag_feature_figure", "lag_profile"]


def lag_profile(attr: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``|attr|`` per (lag, feature) over windows, ``[L, F]`` with row 0 = lag 0 (the current step).

    ``attr`` is ``[N, L, F]`` in window order (oldest first); ``valid`` ``[N, L]`` restricts each lag's mean to
    the windows where it lies in the same episode."""
    if attr.dim() != 3:
        raise ValueError(f"attr must be [N, L, F] windows, got shape {tuple(attr.shape)}")
    a = attr.detach().abs().float()
    w = torch.ones(a.shape[:2]) if valid is None else valid.float()
    mean = (a * w[..., None]).sum(0) / w.sum(0).clamp(min=1)[:, None]
    return mean.flip(0)


def lag_feature_figure(
    attr: torch.Tensor,
    path: str | Path,
    *,
    valid: torch.Tensor | None = None,
    feature_names: Sequence[str] | None = None,
    title: str = "",
    times: torch.Tensor | None = None,
) -> Path:
    """Two panels: the mean ``|attr|`` lag x feature map, and, over the windows (e.g. the steps of an episode),
    each lag's share of the window's total ``|attr|``. Saved as a PNG at ``path``."""
    plt = pyplot()
    prof = lag_profile(attr, valid)
    n_lag, n_feat = prof.shape
    a = attr.detach().abs().float().sum(-1).flip(1)  # [N, L], lag 0 first
    share = a / a.sum(1, keepdim=True).clamp(min=1e-12)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
    im0 = ax0.imshow(prof.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    names = list(feature_names) if feature_names is not None else [str(i) for i in range(n_feat)]
    ax0.set_xticks(range(n_feat), names, rotation=45, ha="right")
    ax0.set_yticks(range(0, n_lag, max(1, n_lag // 9)))
    ax0.set_ylabel("lag k (steps before t)")
    ax0.set_title("mean |attribution| by lag and feature")
    fig.colorbar(im0, ax=ax0, label="mean |attribution|")
    t = torch.arange(len(share)) if times is None else times
    extent = (float(t[0]) - 0.5, float(t[-1]) + 0.5, n_lag - 0.5, -0.5)
    im1 = ax1.imshow(share.T.numpy(), aspect="auto", cmap="magma", interpolation="nearest", extent=extent)
    ax1.set_xlabel("explained step t")
    ax1.set_yticks(range(0, n_lag, max(1, n_lag // 9)))
    ax1.set_ylabel("lag k")
    ax1.set_title("share of |attribution| per lag over the episode")
    fig.colorbar(im1, ax=ax1, label="share of window total")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
