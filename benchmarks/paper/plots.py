"""PNG figures: every library's ratio to rlhook per configuration, log scale (1 = rlhook)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.paper.summary import pivot  # noqa: E402

PANELS = [
    ("warm", "run time (warm)"),
    ("cold", "run time (first call)"),
    ("spawn", "spawn time"),
    ("rss", "peak RSS"),
]


def plot_all(summary: list[dict], out: Path) -> list[Path]:
    tables = {metric: pivot(summary, metric) for metric, _ in PANELS}
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    written = []
    for task in tasks:
        fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.8), sharey=False)
        for ax, (metric, title) in zip(axes, PANELS):
            libs = tables[metric].get(task, {})
            configs = list(dict.fromkeys(c for series in libs.values() for c, *_ in series))
            width = 0.8 / max(1, len(libs))
            for i, (lib, series) in enumerate(sorted(libs.items())):
                pos = {c: j for j, c in enumerate(configs)}
                xs = [pos[c] + (i - (len(libs) - 1) / 2) * width for c, *_ in series]
                ys = [r for _, r, _, _ in series]
                lo = [r - a for _, r, a, _ in series]
                hi = [b - r for _, r, _, b in series]
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=lib)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_yscale("log")
            ax.set_xticks(range(len(configs)), [c.replace(" ", "\n") for c in configs], fontsize=6)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("ratio to rlhook (log)")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{task}: median paired ratio to rlhook, bars = min/max over seeds", fontsize=10)
        fig.tight_layout()
        path = out / f"{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
