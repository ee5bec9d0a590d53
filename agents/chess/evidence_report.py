"""Search and counterfactual evidence on the shipped net: net vs search, the search's choice attributed back to
the board, probes on disagreement positions, and what single edits change the net's move.

    python -m agents.chess.evidence_report --out reports/chess_evidence

Writes ``search_attribution.png``, ``net_vs_search.png``, ``counterfactual_example.png``,
``counterfactual_pieces.png``, ``counterfactual_patching.png`` and ``summary.json`` / ``summary.md`` into ``out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from agents.chess.counterfactual import (
    RemovePiece,
    apply_edit,
    bare,
    edits_td,
    patch_edits,
    square_masks,
    summarise_effects,
    what_changes_the_move,
)
from agents.chess.interpret import LAYERS as ALL_LAYERS
from agents.chess.interpret import concept_positions, layer_activations, load_net, move_uci_white_view
from agents.chess.positions import play_positions
from agents.chess.search import SearchConfig, search
from agents.chess.search_attribution import attribute_search, compare_net_and_search, probe_disagreement
from envs.chess.moves import require_chess
from rlhook.plot import board_grid, board_heatmap, pyplot, save_figure

__all__ = ["main"]

LAYERS = ("block1", "block3", "block5")
CONCEPTS = ("their_hanging", "in_check", "material")


def _search_figure(boards, record, maps, rows: list[int], path: Path) -> Path:
    chess = require_chess()
    panels, titles, fens, arrows = [], [], [], []
    for i in rows:
        black = boards[i].turn == chess.BLACK
        move = move_uci_white_view(int(record["search", "move"][i]), black)
        net_move = move_uci_white_view(int(record["search", "net_move"][i]), black)
        for key, name in (("prior", "root prior"), ("value", "leaf values")):
            panels.append(maps["search_attr", key][i])
            titles.append(f"{name}: search {move}, net {net_move}")
            fens.append(boards[i].fen())
            arrows.append(move)
    return board_grid(
        torch.stack(panels),
        path,
        titles=titles,
        pieces=fens,
        arrows=arrows,
        ncols=4,
        shared_scale=False,
        suptitle="the search's move attributed to the board (IG; leaf pieces followed back to their root squares)",
    )


def _net_vs_search_figure(figures: dict, probes: dict, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 1 + len(probes), figsize=(3.4 * (1 + len(probes)), 3.2))
    names = ["net = search", "net = teacher", "search = teacher"]
    values = [figures["agree"], figures["net_teacher"], figures["search_teacher"]]
    axes[0].bar(names, values, color=["grey", "tab:blue", "tab:orange"])
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"{int(figures['n'])} positions")
    axes[0].tick_params(axis="x", rotation=20)
    for ax, (concept, entry) in zip(axes[1:], probes.items()):
        for side, style in (("agree", "-o"), ("disagree", "--s")):
            scores = entry[side]["trained"]
            ax.plot(list(scores), list(scores.values()), style, label=f"{side} ({entry['rate_' + side]:.2f})")
        ax.set_title(concept)
        ax.legend(fontsize=7, title="subset (label mean)", title_fontsize=7)
    fig.suptitle("raw net vs 64-simulation search; probes scored where they agree and disagree")
    fig.tight_layout()
    return save_figure(fig, path)


def _counterfactual_figures(net, board, effects, summary: dict, out: Path) -> list[Path]:
    chess = require_chess()
    drop = torch.zeros(64)
    for e in effects:
        if e.valid and isinstance(e.edit, RemovePiece):
            drop[chess.parse_square(e.edit.square)] = e.p_before - e.p_after
    changed = [e.edit.square for e in effects if e.valid and e.changed and isinstance(e.edit, RemovePiece)]
    example = board_heatmap(
        drop.reshape(8, 8),
        out / "counterfactual_example.png",
        pieces=board.fen(),
        diverging=True,
        title=f"P(net's move) lost when the piece is removed\n({len(changed)} of the removals change the move)",
    )
    plt = pyplot()
    keys = [k for k in summary if k.startswith("remove_")]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar([k.removeprefix("remove_") for k in keys], [summary[k] for k in keys], color="tab:purple")
    ax.set_ylabel("share of removals that change the move")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", rotation=45)
    ax.set_title(f"{int(summary['remove_n'])} single-piece removals on {summary['positions']:.0f} positions")
    fig.tight_layout()
    return [example, save_figure(fig, out / "counterfactual_pieces.png")]


def _patch_removals(net, boards, effects, out: Path, limit: int = 64) -> tuple[dict[str, float], Path]:
    """Removals that change the net's move while it stays legal: patch the removed piece's square (only) from
    the original into the edit at each layer; share of the move's logit gap restored (sum over pairs)."""
    pairs = [
        (boards[e.position], e)
        for e in effects
        if e.valid and e.changed and e.p_after > 0 and isinstance(e.edit, RemovePiece)
    ][:limit]
    originals = [bare(b) for b, _ in pairs]
    td = edits_td(originals, [apply_edit(b, e.edit) for b, e in pairs])
    with torch.no_grad():
        logits = net.heads(td["patched", "board"])["policy"].masked_fill(~td["legal_original"], float("-inf"))
    moves = logits.argmax(-1)
    masks = square_masks(originals, [e.edit.square for _, e in pairs])
    result = patch_edits(net, td, ALL_LAYERS, moves, masks)
    gap = (result["original"] - result["edited"]).sum()
    shares = {layer: float(result[layer].sum() / gap) for layer in ALL_LAYERS}
    shares["pairs"] = float(len(pairs))
    shares["mean_gap"] = float(gap / max(len(pairs), 1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(
        list(ALL_LAYERS),
        [shares[k] for k in ALL_LAYERS],
        "-o",
        color="tab:purple",
        label="removed square only",
    )
    ax.axhline(1.0, color="grey", ls="--", label="whole layer")
    ax.set_ylabel("share of the move's logit restored")
    ax.set_title(f"patching the original into {len(pairs)} removals that change the move", fontsize=9)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return shares, save_figure(fig, out / "counterfactual_patching.png")


def main(
    out: Path, *, n_train: int = 1500, n_search: int = 200, simulations: int = 64, n_edit: int = 100
) -> dict[str, Any]:
    """Run everything, write the figures and summaries into ``out`` and return the summary."""
    chess = require_chess()
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.time()
        net = load_net()
        td, fens = concept_positions(n_train + n_search, seed=5)
        boards = [chess.Board(f) for f in fens[n_train:]]
        live = [i for i, b in enumerate(boards) if not b.is_game_over(claim_draw=True)]
        boards = [boards[i] for i in live]
        keep = torch.cat([torch.arange(n_train), n_train + torch.tensor(live)])
        td = td[keep]
        record = search(net, boards, SearchConfig(simulations=simulations))
        figures = compare_net_and_search(record, td["move"][n_train:])
        disagree = record["search", "move"] != record["search", "net_move"]
        acts = {"trained": layer_activations(net, td, LAYERS)}
        labels = {c: td["concept", c] for c in CONCEPTS}
        probes = probe_disagreement(acts, labels, n_train, disagree, CONCEPTS)
        rows = (
            torch.nonzero(disagree).flatten()[:2].tolist() + torch.nonzero(~disagree).flatten()[:1].tolist()
        )
        picked = [boards[i] for i in rows]
        sub = record[torch.tensor(rows)]
        maps = attribute_search(net, picked, sub, n_steps=32)
        paths = [_search_figure(picked, sub, maps, list(range(len(rows))), out / "search_attribution.png")]
        paths.append(_net_vs_search_figure(figures, probes, out / "net_vs_search.png"))
        edit_boards = [b for b, _ in play_positions(n_edit, seed=7)]  # with history: siblings too
        effects = what_changes_the_move(net, edit_boards)
        cf = summarise_effects(effects, edit_boards)
        cf["positions"] = float(len(edit_boards))
        example = max(
            range(len(edit_boards)),
            key=lambda i: sum(
                e.changed for e in effects if e.position == i and isinstance(e.edit, RemovePiece)
            ),
        )
        cf_patch, patch_png = _patch_removals(net, edit_boards, effects, out)
        paths.append(patch_png)
        paths += _counterfactual_figures(
            net, edit_boards[example], [e for e in effects if e.position == example], cf, out
        )
        summary = {
            "net_vs_search": figures,
            "simulations": simulations,
            "disagreement_probes": probes,
            "attribution_examples": {
                "fens": [b.fen() for b in picked],
                "explained": maps["search_attr", "explained"].tolist(),
                "delta": maps["search_attr", "delta"].tolist(),
            },
            "counterfactual": cf,
            "counterfactual_patching": cf_patch,
            "figures": [p.name for p in paths],
            "seconds": round(time.time() - t0, 1),
        }
    finally:
        torch.set_num_threads(threads)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def _markdown(s: dict[str, Any]) -> str:
    f, cf = s["net_vs_search"], s["counterfactual"]
    lines = [
        "# Chess: search and counterfactual evidence",
        "",
        f"- {int(f['n'])} positions, {s['simulations']} simulations: net and search agree on {f['agree']:.3f}; "
        f"top-1 vs teacher: net {f['net_teacher']:.3f}, search {f['search_teacher']:.3f}",
        f"- single edits: {int(cf['valid'])} valid of {int(cf['edits'])}; a removal changes the move in "
        f"{cf.get('remove', 0):.3f} of removals, a sibling last move in {cf.get('sibling', 0):.3f}; "
        f"{cf['positions_changed_by_a_removal']:.3f} of positions have a removal that changes the move",
        "- patching only the removed piece's square restores, of the original move's logit gap: "
        + ", ".join(f"{k} {v:.2f}" for k, v in s["counterfactual_patching"].items() if k in ALL_LAYERS),
        "",
        "| concept | layer | agree | disagree |",
        "|---|---|---|---|",
    ]
    for concept, entry in s["disagreement_probes"].items():
        for layer, score in entry["agree"]["trained"].items():
            lines.append(f"| {concept} | {layer} | {score:.3f} | {entry['disagree']['trained'][layer]:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/chess_evidence"))
    parser.add_argument("--positions", type=int, default=200, help="positions searched")
    parser.add_argument("--simulations", type=int, default=64)
    args = parser.parse_args()
    result = main(args.out, n_search=args.positions, simulations=args.simulations)
    print(_markdown(result))
