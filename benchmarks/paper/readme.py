"""Write the README's benchmark tables from the recorded results, or check that they match.

The latest results are committed in ``benchmarks/paper/results/``: ``ratios.md`` (the 2-thread run of every
task), ``ratios-1thread.md`` (the IG task on 1 thread), ``bundle.md`` and ``bundle.json`` (bundle size) and
the ``meta*.json`` of the runs. ``--record`` first copies them from report folders that ``make bench`` wrote.
Each README table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; the ratio tables leave
out the ``bare`` rows (the floor, quoted in the prose). ``--check`` changes nothing and exits with 1 when the
README differs from the results.

    python -m benchmarks.paper.readme [--record reports/bench reports/bench-1thread] [--check]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from benchmarks.paper.measure import ROOT

RESULTS = Path(__file__).resolve().parent / "results"
README = ROOT / "README.md"
# results file -> (report file, which report folder of --record: 0 the 2-thread run, 1 the 1-thread run)
RECORDED = {
    "ratios.md": ("ratios.md", 0),
    "meta.json": ("meta.json", 0),
    "bundle.md": ("bundle.md", 0),
    "bundle.json": ("bundle.json", 0),
    "ratios-1thread.md": ("ratios.md", 1),
    "meta-1thread.json": ("meta.json", 1),
}
# README marker name -> (results file, whether the bare rows are dropped)
SECTIONS = {
    "ratios": ("ratios.md", True),
    "ratios-1thread": ("ratios-1thread.md", True),
    "bundle": ("bundle.md", False),
}


def table(path: Path, drop_bare: bool) -> str:
    """The markdown table of a results file (its ``|`` lines), without the ``bare`` rows if asked."""
    rows = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    if not rows:
        raise ValueError(f"{path} holds no markdown table")
    return "\n".join(r for r in rows if not (drop_bare and "| bare |" in r))


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` (the README) with every marked table replaced by the one from ``results``."""
    for name, (file, drop_bare) in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- bench:{re.escape(name)} -->\n).*?(\n<!-- /bench:{re.escape(name)} -->)", re.S
        )
        if len(pattern.findall(text)) != 1:
            raise ValueError(
                f"README needs exactly one '<!-- bench:{name} -->' ... '<!-- /bench:{name} -->' block around "
                f"the table made from {file}"
            )
        body = table(results / file, drop_bare)
        text = pattern.sub(lambda m, b=body: m.group(1) + b + m.group(2), text)
    return text


def record(folders: list[Path], results: Path = RESULTS) -> list[str]:
    """Copy the report files of ``folders`` (2-thread run, then optionally 1-thread run) into ``results``."""
    results.mkdir(parents=True, exist_ok=True)
    copied = []
    for dest, (src, which) in RECORDED.items():
        if which < len(folders) and (folders[which] / src).exists():
            shutil.copyfile(folders[which] / src, results / dest)
            copied.append(dest)
    return copied


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--record", nargs="+", metavar="REPORT", help="report folders: 2-thread run [1-thread run]"
    )
    p.add_argument("--check", action="store_true", help="only check that the README matches the results")
    args = p.parse_args()
    if args.record and not args.check:
        print("recorded " + ", ".join(record([ROOT / f for f in args.record])))
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            sys.exit(
                "README benchmark tables differ from benchmarks/paper/results/: run python -m benchmarks.paper.readme"
            )
        print("README benchmark tables match benchmarks/paper/results/")
        return
    README.write_text(new)
    print("README benchmark tables " + ("rewritten" if new != text else "already up to date"))


if __name__ == "__main__":
    main()
