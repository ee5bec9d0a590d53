"""Run the paper's tasks side by side: accuracy check first, then interleaved rounds of whole processes.

Every library, configuration, seed and phase (spawn: imports + model/data construction; run: the same plus
the work) is a fresh process under ``/usr/bin/time -v``. A round is one seed: inside it every task and grid
point runs each library's spawn and run processes, the library order rotated from round to round so that
the machine's noise falls on all of them alike. Ratios to rlhook are taken within a round (paired), then the
median and the spread (min, max) over the rounds are reported.

    python -m benchmarks.paper.bench [--quick] [--tasks ig lrp ...] [--out reports/bench]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.paper.accuracy import compare
from benchmarks.paper.grids import TASKS, label
from benchmarks.paper.measure import ROOT, launch
from benchmarks.paper.report import build

VENVS = {"main": ".bench/venv/bin/python", "vision": ".bench/venv-vision/bin/python"}


def python_for(venv: str) -> str:
    path = ROOT / VENVS[venv]
    if not path.exists():
        print(f"{VENVS[venv]} missing (make bench builds it): using {sys.executable}", file=sys.stderr)
        return sys.executable
    return str(path)


def check(name: str, task, args) -> dict:
    """Run every library once on the task's small configuration and compare outputs with rlhook's."""
    python = python_for(task.venv)
    with tempfile.TemporaryDirectory() as tmp:
        saved, errors = {}, {}
        for lib in task.libs:
            path = f"{tmp}/{lib}.pt"
            row = launch(
                python,
                task.module,
                lib,
                "run",
                task.check,
                42,
                threads=args.threads,
                device=args.device,
                save=path,
            )
            if "error" in row:
                errors[lib] = row["error"]
            else:
                saved[lib] = path
        result = compare(saved, reference="rlhook")
    for lib, err in errors.items():
        result[lib] = {"ok": False, "error": err}
    bad = [lib for lib, r in result.items() if not r["ok"]]
    print(f"check {name} {label(task.check)}: " + ("all agree" if not bad else f"DISAGREE or failed: {bad}"))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick grid (default point + one value per task)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 123, 456])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="reports/bench")
    args = p.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    # a run of some tasks replaces those tasks' rows in an existing report and keeps the others'
    kept, accuracy = [], {}
    if (out / "raw.json").exists() and (out / "accuracy.json").exists():
        kept = [r for r in json.loads((out / "raw.json").read_text()) if r["task"] not in args.tasks]
        accuracy = {
            t: v for t, v in json.loads((out / "accuracy.json").read_text()).items() if t not in args.tasks
        }
    accuracy |= {name: check(name, TASKS[name], args) for name in args.tasks}
    (out / "accuracy.json").write_text(json.dumps(accuracy, indent=1))
    agreed = {
        name: [lib for lib in TASKS[name].libs if accuracy[name].get(lib, {}).get("ok")]
        for name in args.tasks
    }

    rows: list[dict] = list(kept)
    for rnd, seed in enumerate(args.seeds):
        for name in args.tasks:
            task = TASKS[name]
            python = python_for(task.venv)
            for ci, config in enumerate(task.grid(args.quick)):
                libs = agreed[name]
                shift = (rnd + ci) % max(1, len(libs))
                for lib in libs[shift:] + libs[:shift]:
                    phases = ("spawn", "run") if rnd % 2 == 0 else ("run", "spawn")
                    for phase in phases:
                        r = launch(
                            python,
                            task.module,
                            lib,
                            phase,
                            config,
                            seed,
                            threads=args.threads,
                            device=args.device,
                            repeats=task.repeats if phase == "run" else 1,
                        )
                        rows.append(
                            {
                                "task": name,
                                "config": label(config),
                                "lib": lib,
                                "seed": seed,
                                "round": rnd,
                                "phase": phase,
                                **r,
                            }
                        )
                print(f"round {rnd} seed {seed} {name} {label(config)} done ({time.time() - started:.0f} s)")
        write_raw(out, rows)

    command = "python -m benchmarks.paper.bench " + " ".join(sys.argv[1:])
    if kept and (out / "meta.json").exists():  # the report also holds rows of earlier commands
        command = json.loads((out / "meta.json").read_text())["command"] + "`, then `" + command
    meta = {
        "command": command,
        "tasks_run": args.tasks,
        "grid": "quick" if args.quick else "full",
        "seeds": args.seeds,
        "threads": args.threads,
        "device": args.device,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "elapsed_s": round(time.time() - started),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    build(out)
    print(f"wrote {args.out}/ in {time.time() - started:.0f} s")


def write_raw(out: Path, rows: list[dict]) -> None:
    (out / "raw.json").write_text(json.dumps(rows, indent=1))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
