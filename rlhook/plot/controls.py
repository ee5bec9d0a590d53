"""Probe scores next to their controls: one group of bars per quantity, one bar per feature set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhook.plot.heatmap import pyplot, save_figure

__all__ = ["probe_controls_figure"]


def probe_controls_figure(
    rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "", floor: float = -0.5
) -> Path:
    """Bars of the best layer's score per (quantity, feature set) from ``probe_with_controls`` rows, with the
    shuffled-label score of that layer as a black tick; saved as a PNG at ``path``.

    Scores below ``floor`` (R^2 is unbounded below) are drawn down to it and labelled with their value, so one
    undecodable quantity does not flatten the others."""
    plt = pyplot()
    quantities = list(dict.fromkeys(r["quantity"] for r in rows))
    sets = list(dict.fromkeys(r["features"] for r in rows))
    if not quantities or not sets:
        raise ValueError("probe_controls_figure needs at least one probe row")
    width = 0.8 / len(sets)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(quantities) + 2), 4.2))
    for j, name in enumerate(sets):
        best, shuffled = [], []
        for q in quantities:
            mine = [r for r in rows if r["quantity"] == q and r["features"] == name]
            top = max(mine, key=lambda r: r["score"]) if mine else {"score": float("nan"), "shuffled": None}
            best.append(top["score"])
            shuffled.append(top["shuffled"] if top["shuffled"] is not None else float("nan"))
        xs = [i + (j - (len(sets) - 1) / 2) * width for i in range(len(quantities))]
        ax.bar(xs, [max(b, floor) for b in best], width * 0.9, label=name)
        for x, b in zip(xs, best):
            if b < floor:
                ax.text(
                    x, floor, f"{b:.3g}", rotation=90, ha="center", va="bottom", fontsize=7, color="white"
                )
        ax.scatter(
            xs,
            [max(v, floor) if v == v else v for v in shuffled],  # (NaN: no control)
            marker="_",
            color="black",
            s=120,
            zorder=3,
            label="shuffled labels" if j == 0 else None,
        )
    metric = rows[0].get("metric", "score")
    ax.set_xticks(range(len(quantities)), quantities)
    ax.set_ylabel(f"test {metric} (best layer)")
    ax.set_ylim(max(floor, min(-0.2, ax.get_ylim()[0])), 1.0)
    ax.axhline(0, color="grey", lw=0.8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title or "probe scores and controls")
    fig.tight_layout()
    return save_figure(fig, path)
