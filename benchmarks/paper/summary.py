"""Paired ratios to rlhook per round, their median and spread, and the markdown tables."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

# metric -> (phase, field of that process, what it is)
METRICS = {
    "cold": ("run", "work_s", "first call, in-process"),
    "warm": ("run", "warm_s", "median of the later calls, in-process"),
    "warm_cpu": ("run", "warm_cpu_s", "CPU seconds (all threads) of the later calls, in-process"),
    "spawn": ("spawn", "wall_s", "spawn process wall time"),
    "run_wall": ("run", "wall_s", "run process wall time"),
    "rss": ("run", "rss_mb", "peak RSS of the run process"),
}


def summarise(rows: list[dict], tasks: dict) -> list[dict]:
    """One row per task, config, library, rlhook variant compared with and metric: the median value and the
    ratio to that rlhook variant (computed per round, then median, min and max over the rounds)."""
    by = {}
    for r in rows:
        if "error" not in r:
            by[(r["task"], r["config"], r["lib"], r["round"], r["phase"])] = r
    keys = sorted(
        {(t, c, lib) for t, c, lib, _, _ in by}, key=lambda k: (list(tasks).index(k[0]), k[1], k[2])
    )
    rounds = sorted({k[3] for k in by})
    out = []
    for task, config, lib in keys:
        for ref in tasks[task].references(lib):
            for metric, (phase, field, _) in METRICS.items():
                values, ratios = [], []
                for rnd in rounds:
                    mine = by.get((task, config, lib, rnd, phase))
                    theirs = by.get((task, config, ref, rnd, phase))
                    if mine is None or field not in mine:
                        continue
                    values.append(mine[field])
                    if theirs is not None and theirs.get(field):
                        ratios.append(mine[field] / theirs[field])
                if not values:
                    continue
                out.append(
                    {
                        "task": task,
                        "config": config,
                        "lib": lib,
                        "vs": ref,
                        "main": ref == tasks[task].reference(lib),
                        "metric": metric,
                        "value": statistics.median(values),
                        "ratio": statistics.median(ratios) if ratios else None,
                        "ratio_min": min(ratios) if ratios else None,
                        "ratio_max": max(ratios) if ratios else None,
                        "rounds": len(ratios),
                    }
                )
    return out


def cell(row: dict | None, unit: str = "") -> str:
    if row is None or row["ratio"] is None:
        return "-"
    v = row["value"]
    shown = f"{v * 1e3:.0f} ms" if unit == "ms" else f"{v:.0f} MB" if unit == "MB" else f"{v:.2f} s"
    return f"{shown} ({row['ratio']:.2f}x [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}])"


def write_tables(path: Path, summary: list[dict], meta: dict) -> None:
    """Markdown: per task, each library's warm and cold run, spawn and peak RSS, with ratio to rlhook."""
    index = {(r["task"], r["config"], r["lib"], r["vs"], r["metric"]): r for r in summary}
    lines = [
        f"Produced by `{meta['command']}` ({meta['grid']} grid, seeds {meta['seeds']}, {meta['threads']} threads, "
        f"{meta['device']}). Cells: median over rounds, then in parentheses the median paired ratio to the "
        "rlhook variant in `vs` and its [min, max] over the rounds; above 1 means slower or bigger than rlhook.",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in summary):
        lines += [
            f"### {task}",
            "",
            "| config | library | vs | run (warm) | run CPU (warm) | run (first call) | spawn | peak RSS |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for config, lib, vs in dict.fromkeys(
            (r["config"], r["lib"], r["vs"]) for r in summary if r["task"] == task
        ):
            g = lambda m, t=task, c=config, lib=lib, vs=vs: index.get((t, c, lib, vs, m))
            lines.append(
                f"| {config} | {lib} | {vs} | {cell(g('warm'), 'ms')} | {cell(g('warm_cpu'), 'ms')} | {cell(g('cold'), 'ms')} | "
                f"{cell(g('spawn'))} | {cell(g('rss'), 'MB')} |"
            )
        lines.append("")
    path.write_text("\n".join(lines))


def pivot(summary: list[dict], metric: str) -> dict:
    """``{task: {lib: [(config, ratio, lo, hi)]}}`` for the plots."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in summary:
        if r["metric"] == metric and r["ratio"] is not None and r["main"]:
            out[r["task"]][r["lib"]].append((r["config"], r["ratio"], r["ratio_min"], r["ratio_max"]))
    return out


def ratio(row: dict | None) -> str:
    if row is None or row["ratio"] is None:
        return "-"
    return f"{row['ratio']:.2f}x [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]"


def write_compact(path: Path, summary: list[dict], meta: dict) -> None:
    """The README's table: every other library's ratio to the rlhook variant doing the same work."""
    index = {(r["task"], r["config"], r["lib"], r["vs"], r["metric"]): r for r in summary}
    lines = [
        f"`{meta['command']}` ({meta['grid']} grid, seeds {meta['seeds']}, {meta['threads']} threads, "
        f"{meta['device']}): median paired ratio library / rlhook over the rounds, [min, max]; above 1: "
        "slower or bigger than rlhook. `bare`: torch (+ tensordict, + the task's model library) and a plain "
        "forward, the floor.",
        "",
        "| task | config | library | vs | run (warm) | run CPU (warm) | first call | spawn | peak RSS |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for task, config, lib, vs in dict.fromkeys((r["task"], r["config"], r["lib"], r["vs"]) for r in summary):
        if lib == vs:
            continue
        g = lambda m, k=(task, config, lib, vs): index.get((*k, m))
        lines.append(
            f"| {task} | {config} | {lib} | {vs} | {ratio(g('warm'))} | {ratio(g('warm_cpu'))} | "
            f"{ratio(g('cold'))} | {ratio(g('spawn'))} | {ratio(g('rss'))} |"
        )
    path.write_text("\n".join(lines) + "\n")
