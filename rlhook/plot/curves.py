"""Curves: probe scores vs training frames, with their controls."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhook.plot.heatmap import pyplot, save_figure

__all__ = ["probe_curves"]


def probe_curves(history: Sequence[dict[str, Any]], path: str | Path, *, metric: str = "r2") -> Path:
    """One panel per quantity: ``metric`` vs ``frames``, a solid line per trained layer, controls dashed.

    ``history`` rows hold ``frames, model, layer, quantity`` and the metric (``TrainingProbes.history``).
    """
    plt = pyplot()
    quantities = sorted({r["quantity"] for r in history})
    layers = sorted({r["layer"] for r in history if r["model"] == "trained"})
    fig, axes = plt.subplots(1, len(quantities), figsize=(4.2 * len(quantities), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, q in zip(axes[0], quantities):
        for i, layer in enumerate(layers):
            for model, style in (("trained", "-"), ("random_init", "--"), ("shuffled", ":")):
                pts = sorted(
                    (r["frames"], r[metric])
                    for r in history
                    if r["quantity"] == q and r["layer"] == layer and r["model"] == model
                )
                if pts:
                    label = layer.split(".")[-1] + ("" if model == "trained" else f" ({model})")
                    ax.plot(*zip(*pts), style, color=colors[i % len(colors)], label=label, marker=".")
        raw = sorted(
            (r["frames"], r[metric]) for r in history if r["quantity"] == q and r["model"] == "raw_obs"
        )
        if raw:
            ax.plot(*zip(*raw), "-.", color="black", label="raw observation")
        ax.set_title(q)
        ax.set_xlabel("frames")
        ax.set_ylabel(f"test {metric}")
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
