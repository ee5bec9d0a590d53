"""Rebuild the summary (CSV/JSON), the markdown tables and the plots of a report folder from its raw rows.

python -m benchmarks.paper.report [reports/bench]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from benchmarks.paper.grids import TASKS
from benchmarks.paper.summary import summarise, write_compact, write_tables


def build(out: Path) -> list[dict]:
    rows = json.loads((out / "raw.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    summary = summarise(rows, {name: TASKS[name] for name in TASKS if any(r["task"] == name for r in rows)})
    (out / "summary.json").write_text(json.dumps({"meta": meta, "rows": summary}, indent=1))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    write_tables(out / "tables.md", summary, meta)
    write_compact(out / "ratios.md", summary, meta)
    try:
        from benchmarks.paper.plots import plot_all

        plot_all(summary, out)
    except ImportError as exc:
        print(f"plots skipped ({exc})", file=sys.stderr)
    return summary


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "reports/bench"))
