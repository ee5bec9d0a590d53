"""Figures and table: activation patching per head vs attribution and relevance patching.

``python -m agents.induction.report`` writes ``figures/heads.png`` (per-head effects, one panel per
method), ``figures/correlation.png`` (estimate vs true effect per head and per position, with Pearson and
Spearman r) and prints the correlation table as Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from agents.induction import circuit

ROOT = Path(__file__).parent


def correlations(n: int = 64, seed: int = 0) -> tuple[dict, dict]:
    """``(values, table)``: per-head and per-position effects of every method, and ``{method: {level:
    (pearson, spearman)}}`` against activation patching."""
    from scipy import stats

    model = circuit.load()
    td = circuit.batch(n, model.cfg, seed)
    values = {
        "head": {"activation patching": circuit.patching_effects(model, td)},
        "position": {"activation patching": circuit.patching_effects(model, td, per_position=True)},
    }
    for name, rules in circuit.RULE_SETS.items():
        values["head"][name] = circuit.estimates(model, td, rules)
        values["position"][name] = circuit.estimates(model, td, rules, per_position=True)
    table = {}
    for name in circuit.RULE_SETS:
        for level in ("head", "position"):
            x, y = values[level]["activation patching"].flatten(), values[level][name].flatten()
            table.setdefault(name, {})[level] = (stats.pearsonr(x, y)[0], stats.spearmanr(x, y)[0])
    values["scores"] = circuit.head_scores(model, td)
    return values, table


def markdown(table: dict) -> str:
    lines = [
        "| estimate | Pearson (head) | Spearman (head) | Pearson (head x position) | Spearman (head x position) |"
    ]
    lines.append("|---|---|---|---|---|")
    for name, row in table.items():
        (ph, sh), (pp, sp) = row["head"], row["position"]
        lines.append(f"| {name} | {ph:.3f} | {sh:.3f} | {pp:.3f} | {sp:.3f} |")
    return "\n".join(lines)


def plot(values: dict, table: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    heads = values["head"]
    fig, axes = plt.subplots(1, len(heads), figsize=(3.2 * len(heads), 2.8))
    for ax, (name, v) in zip(axes, heads.items()):
        im = ax.imshow(v.numpy(), cmap="viridis", aspect="auto")
        ax.set(title=name, xlabel="head", ylabel="layer", xticks=range(v.shape[1]), yticks=range(v.shape[0]))
        fig.colorbar(im, ax=ax, label="loss increase (nats)")
    fig.suptitle("Patching each head's output from a broken-repeat source: effect on the repeat loss")
    fig.tight_layout()
    fig.savefig(out / "heads.png", dpi=150)
    plt.close(fig)
    names = list(circuit.RULE_SETS)
    fig, axes = plt.subplots(2, len(names), figsize=(3.4 * len(names), 6.4))
    for row, level in enumerate(("head", "position")):
        true = values[level]["activation patching"].flatten()
        for ax, name in zip(axes[row], names):
            est = values[level][name].flatten()
            pr, sr = table[name][level]
            ax.scatter(true, est, s=6 if level == "position" else 30, alpha=0.6)
            lim = [min(true.min(), est.min()).item(), max(true.max(), est.max()).item()]
            ax.plot(lim, lim, c="grey", ls="--", lw=1)
            ax.set(
                title=f"{name}\nper {'head' if level == 'head' else 'example x head x position'}",
                xlabel="activation patching effect",
                ylabel="first-order estimate",
            )
            ax.text(0.03, 0.97, f"Pearson {pr:.2f}\nSpearman {sr:.2f}", transform=ax.transAxes, va="top")
    fig.tight_layout()
    fig.savefig(out / "correlation.png", dpi=150)
    plt.close(fig)
    return [out / "heads.png", out / "correlation.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "figures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    values, table = correlations(args.n)
    plot(values, table, args.out)
    print(markdown(table))
    print("previous-token score per head:\n", values["scores"]["previous"])
    print("induction score per head:\n", values["scores"]["induction"])


if __name__ == "__main__":
    main()
