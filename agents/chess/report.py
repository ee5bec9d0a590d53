"""The chess report (`make demo`): board heatmaps, concept probes with controls, a what-when-where figure, and
the causal checks (patching, probe-direction ablation) on the shipped Leela-style net.

    python -m agents.chess.report --out reports/chess

Writes PNG files plus ``summary.json`` / ``summary.md`` into ``out``; about 2 minutes on a 2-core CPU
(3,000 seeded positions, and 20,000 more for the enriched mate-in-one probe; one thread).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from agents.chess.interpret import (
    CONCEPTS,
    LAYERS,
    RawPlanes,
    ablate_direction,
    concept_positions,
    draw_explanation,
    enriched_rows,
    explain,
    hanging_pairs,
    layer_activations,
    load_net,
    pairs_td,
    patch_hanging,
    probe_concepts,
    probe_direction,
    probe_squares,
    random_net,
)
from rlhook.plot import heatmap, pyplot, save_figure

STEPS = ("step450", "step900", "step1350", "final")
N, N_TRAIN, SEED = 3000, 2000, 5
MATE_N, MATE_SEED, MATE_RATE = 20_000, 11, 0.2  # mate in one is rare (0.7%): probed on an enriched set


def _round(d: Any, k: int = 3) -> Any:
    if isinstance(d, dict):
        return {key: _round(v, k) for key, v in d.items()}
    return round(float(d), k) if isinstance(d, float | int) else d


def _probe_figure(results: dict, squares: list, path: Path) -> Path:
    """One panel per concept: score vs layer for the trained net, random init, raw planes, shuffled labels."""
    plt = pyplot()
    panels = [*results.values(), *squares]
    ncols = 5
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.1 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    x = range(len(LAYERS))
    for ax, res in zip(axes.flat, panels):
        ax.plot(x, [res.scores["trained"][n] for n in LAYERS], "-o", label="trained (final)", ms=3)
        ax.plot(x, [res.scores["random_init"][n] for n in LAYERS], "--s", label="random init", ms=3)
        ax.axhline(res.scores["raw_planes"]["planes"], color="black", ls="-.", label="raw planes")
        if res.control.get("trained"):
            ax.plot(
                x, [res.control["trained"][n] for n in LAYERS], ":", color="gray", label="shuffled labels"
            )
        ax.set_xticks(list(x), [n.replace("block", "b").replace("inputconv", "stem") for n in LAYERS])
        ax.set_title(res.concept.replace("_", " "), fontsize=9)
        ax.set_ylabel("test R^2" if res.metric == "r2" else "balanced accuracy", fontsize=8)
        ax.set_ylim(min(-0.05, ax.get_ylim()[0]) if res.metric == "r2" else 0.4, 1.02)
    axes.flat[len(panels) - 1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def _mate_in_one_probe(net: torch.nn.Module) -> Any:
    """Mate in one available, probed on an enriched set (``enriched_rows``) with the same controls."""
    td, _ = concept_positions(MATE_N, seed=MATE_SEED)
    td = td[enriched_rows(td["concept", "mate_in_one"], MATE_RATE)]
    acts = {
        "trained": layer_activations(net, td),
        "random_init": layer_activations(random_net(0), td),
        "raw_planes": layer_activations(RawPlanes(), td, ["planes"]),
    }
    labels = {"mate_in_one": td["concept", "mate_in_one"]}
    res = probe_concepts(acts, labels, 2 * len(td) // 3, concepts=["mate_in_one"])["mate_in_one"]
    res.concept = f"mate in one ({MATE_RATE:.0%}-enriched)"
    return res


def _www_figure(grids: dict[str, list[list[float]]], path: Path) -> Path:
    """Concept score per layer (rows) and training checkpoint (columns), one annotated panel per concept."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(4.0 * len(grids), 3.8), squeeze=False)
    for ax, (title, grid) in zip(axes[0], grids.items()):
        v = torch.tensor(grid).T  # (layers, checkpoints)
        im = ax.imshow(v.numpy(), cmap="viridis", aspect="auto")
        for r in range(v.shape[0]):
            for c in range(v.shape[1]):
                ax.text(c, r, f"{v[r, c]:.2f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(STEPS)), list(STEPS), fontsize=7)
        ax.set_yticks(range(len(LAYERS)), list(LAYERS), fontsize=7)
        ax.set_xlabel("training checkpoint", fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("what-when-where: concept score vs layer vs training checkpoint", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def main(out: Path, train_frames: int | None = None) -> dict[str, Any]:
    """Write the chess report into ``out`` and return its summary (``train_frames`` is unused: no training)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _report(out)
    finally:
        torch.set_num_threads(threads)


def _report(out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"positions": {"n": N, "train": N_TRAIN, "seed": SEED}}

    td, fens = concept_positions(N, seed=SEED)
    timings["positions"] = time.perf_counter() - t0
    summary["positions"]["positives"] = {
        k: int(td["concept", k].sum()) for k, task in CONCEPTS.items() if task == "classification"
    }
    nets = {s: load_net(s) for s in STEPS}
    acts = {s: layer_activations(nets[s], td) for s in STEPS}
    acts["random_init"] = layer_activations(random_net(0), td)
    acts["raw_planes"] = layer_activations(RawPlanes(), td, ["planes"])
    timings["activations"] = time.perf_counter() - t0 - sum(timings.values())

    # -- probes on the final net with its controls ---------------------------------------------------------------
    final = {"trained": acts["final"], "random_init": acts["random_init"], "raw_planes": acts["raw_planes"]}
    labels = {k: td["concept", k] for k in CONCEPTS}
    probes = probe_concepts(final, labels, N_TRAIN)
    squares = probe_squares(final, td, N_TRAIN)
    more_squares = [probe_squares(final, td, N_TRAIN, concept=c) for c in ("own_hanging", "attacked_by_them")]
    summary["probes"] = {
        c: {"metric": r.metric, "scores": _round(r.scores), "shuffled_labels": _round(r.control)}
        for c, r in probes.items()
    }
    probes["mate_in_one"] = _mate_in_one_probe(nets["final"])
    summary["probes"]["mate_in_one"] = {
        "metric": probes["mate_in_one"].metric,
        "data": f"every mate-in-one position of concept_positions({MATE_N}, seed={MATE_SEED}) plus random "
        f"others, {MATE_RATE:.0%} positive; 2/3 train, 1/3 test",
        "scores": _round(probes["mate_in_one"].scores),
        "shuffled_labels": _round(probes["mate_in_one"].control),
    }
    summary["probes"]["their_hanging_per_square"] = {
        "metric": "balanced accuracy on squares holding their piece; '/global' = some square predicted hanging",
        "scores": _round(squares.scores),
        "shuffled_labels": _round(squares.control),
    }
    for extra in more_squares:
        summary["probes"][extra.concept] = {
            "metric": "balanced accuracy per square (own non-king pieces / every square)",
            "scores": _round(extra.scores),
            "shuffled_labels": _round(extra.control),
        }
    figure = _probe_figure(probes, [squares, *more_squares], out / "probes_final_vs_controls.png")
    timings["probes"] = time.perf_counter() - t0 - sum(timings.values())

    # -- what-when-where: concept score vs block vs training checkpoint ------------------------------------------
    when = {s: acts[s] for s in STEPS}
    www_sq = probe_squares(when, td, N_TRAIN)
    www = probe_concepts(when, labels, N_TRAIN, concepts=["material", "their_hanging"], control=False)
    grids = {
        "their piece hanging, per square (BA)": [[www_sq.scores[s][n] for n in LAYERS] for s in STEPS],
        "their piece hanging, global (BA)": [
            [www["their_hanging"].scores[s][n] for n in LAYERS] for s in STEPS
        ],
        "material (R^2)": [[www["material"].scores[s][n] for n in LAYERS] for s in STEPS],
    }
    www_png = [_www_figure(grids, out / "what_when_where.png")]
    summary["what_when_where"] = {
        t: {s: _round(dict(zip(LAYERS, row))) for s, row in zip(STEPS, g)} for t, g in grids.items()
    }
    timings["what_when_where"] = time.perf_counter() - t0 - sum(timings.values())

    # -- board heatmaps: a position where their queen hangs, one of each colour to move ---------------------------
    net = nets["final"]
    queen = torch.nonzero(td["value", "their_hanging"][N_TRAIN:] == 9).flatten() + N_TRAIN
    picks = []
    for colour in (False, True):
        found = [int(i) for i in queen if bool(td["black"][i]) == colour]
        if found:
            picks.append(found[0])
    boards = []
    for k, i in enumerate(picks):
        maps = explain(net, td[i : i + 1], ("saliency", "ig", "lrp"))
        pngs = draw_explanation(maps, 0, fens[i], out, prefix=f"board{k}")
        boards.append({"fen": fens[i], "pngs": [str(p) for p in pngs]})
    summary["board_heatmaps"] = boards
    timings["attributions"] = time.perf_counter() - t0 - sum(timings.values())

    # -- causal checks --------------------------------------------------------------------------------------------
    pairs = hanging_pairs(fens[N_TRAIN:], limit=64)
    ptd = pairs_td(pairs)
    patch: dict[str, Any] = {}
    rows = []
    for what in ("whole", "square", "from", "defender"):
        eff = patch_hanging(net, ptd, squares=None if what == "whole" else ptd[what])
        patch[what] = {n: round(float(eff[n + "/restored"].mean()), 3) for n in LAYERS}
        rows.append([patch[what][n] for n in LAYERS])
        patch["capture_logit_defended"] = round(float(eff["clean"].mean()), 3)
        patch["capture_logit_hanging"] = round(float(eff["source"].mean()), 3)
    back = patch_hanging(net, ptd, squares=ptd["square"], reverse=True)
    patch["reverse_square_logit_change"] = {n: round(float(back[n].mean()), 3) for n in LAYERS}
    patch["pairs"] = len(pairs)
    patch_png = heatmap(
        torch.tensor(rows),
        out / "patching_hanging_into_defended.png",
        xlabels=list(LAYERS),
        ylabels=["whole layer", "hanging square", "capturer's square", "defender's square"],
        title="capture-logit gap restored by patching hanging -> defended",
    )
    summary["patching"] = {
        "meaning": "mean (patched - defended) / (hanging - defended) capture-move logit, per patched layer",
        **patch,
        "figure": str(patch_png),
    }
    hanging = ptd.select("capture").set("board", ptd["patched", "board"])
    ablation = {}
    gen = torch.Generator().manual_seed(0)
    for n in LAYERS:
        u = probe_direction(squares, "trained", n)
        a = acts["final"][n][:N_TRAIN]
        r = torch.randn(u.shape, generator=gen)
        r = r / r.norm()
        mean_u = float((a * u.reshape(1, -1, 1, 1)).sum(1).mean())
        mean_r = float((a * r.reshape(1, -1, 1, 1)).sum(1).mean())
        ablation[n] = {
            "probe_direction": round(float(ablate_direction(net, hanging, n, u, mean_u).mean()), 3),
            "random_direction": round(float(ablate_direction(net, hanging, n, r, mean_r).mean()), 3),
        }
    summary["ablation"] = {
        "meaning": "mean change of the capture logit on hanging positions when the per-square 'their piece "
        "hangs' probe direction (or a random one) is set to its mean at every square",
        **ablation,
    }
    timings["causal"] = time.perf_counter() - t0 - sum(timings.values())
    summary["figures"] = [str(figure), *map(str, www_png), str(patch_png)]
    summary["seconds"] = _round({**timings, "total": time.perf_counter() - t0}, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def _markdown(s: dict[str, Any]) -> str:
    lines = [
        "# Chess report",
        "",
        f"Positions: {s['positions']}",
        "",
        "## Probes (test scores per layer)",
        "",
    ]
    lines.append("| concept | model | " + " | ".join(LAYERS) + " |")
    lines.append("|---|---|" + "---|" * len(LAYERS))
    for c, r in s["probes"].items():
        for model, sc in r["scores"].items():
            cells = (
                [str(sc.get(n, sc.get("planes", ""))) for n in LAYERS]
                if model != "raw_planes"
                else [str(sc["planes"])] + [""] * (len(LAYERS) - 1)
            )
            lines.append(f"| {c} | {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Patching (share of the capture-logit gap restored)",
        "",
        "```",
        json.dumps(s["patching"], indent=1),
        "```",
    ]
    lines += [
        "",
        "## Probe-direction ablation (capture-logit change)",
        "",
        "```",
        json.dumps(s["ablation"], indent=1),
        "```",
    ]
    lines += ["", f"Seconds: {s['seconds']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports/chess")
    args = p.parse_args()
    print(json.dumps(main(Path(args.out)), indent=2))
