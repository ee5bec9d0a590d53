"""Disk cost of each library over a torch-only venv: MB and files.

A fresh venv with torch 2.13.0 (CPU) alone is the baseline; each library is then installed on its own into a
copy of that venv (torch kept at 2.13.0 by a constraint) and the copy is measured. rlhook is installed from
this working tree without extras. The venvs live under ``--root`` and are removed afterwards unless ``--keep``.

    python -m benchmarks.paper.bundle_size [--root .bench/bundle] [--out reports/bench]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.paper.measure import ROOT

HERE = Path(__file__).resolve().parent
# what goes into each copy of the torch-only venv; tdhook without its dependencies' own torch range
INSTALLS: dict[str, list[list[str]]] = {
    "tensordict": [["tensordict==0.14.3"]],
    "rlhook": [[str(ROOT)]],
    "tdhook": [["tensordict==0.14.3"], ["--no-deps", "tdhook==0.3.0"]],
    "captum": [["captum==0.9.0"]],
    "zennit": [["zennit==0.5.1"]],
    "nnsight": [["nnsight==0.8.1"]],
    "transformer-lens": [["transformer-lens==4.3.0"]],
}


def size(venv: Path) -> dict:
    files, total = 0, 0
    for folder, _, names in os.walk(venv):
        for n in names:
            p = os.path.join(folder, n)
            if not os.path.islink(p):
                files += 1
                total += os.stat(p).st_size
    return {"mb": round(total / 1e6), "files": files}


def pip(venv: Path, args: list[str]) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir"]
    subprocess.run([*cmd, "-c", str(HERE / "constraints.txt"), *args], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=".bench/bundle")
    p.add_argument("--out", default="reports/bench")
    p.add_argument("--libs", nargs="+", default=list(INSTALLS), choices=list(INSTALLS))
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    root, out = ROOT / args.root, ROOT / args.out
    root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    base = root / "torch-only"
    if not (base / ".done").exists():
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(base)], check=True)
        pip(base, ["torch==2.13.0"])
        (base / ".done").touch()
    rows = [{"install": "torch 2.13.0 alone", **size(base)}]
    print(rows[-1])
    for lib in args.libs:
        venv = root / lib
        shutil.rmtree(venv, ignore_errors=True)
        shutil.copytree(base, venv, symlinks=True)
        (venv / ".done").unlink()
        try:
            for step in INSTALLS[lib]:
                pip(venv, step)
            rows.append({"install": f"+ {lib}", **size(venv)})
        except subprocess.CalledProcessError as exc:
            rows.append({"install": f"+ {lib}", "mb": None, "files": None, "error": str(exc)[-200:]})
        print(rows[-1])
        if not args.keep:
            shutil.rmtree(venv)
    b = rows[0]
    for r in rows:
        if r.get("mb") is not None:
            r["extra_mb"], r["extra_files"] = r["mb"] - b["mb"], r["files"] - b["files"]
    (out / "bundle.json").write_text(json.dumps(rows, indent=1))
    with open(out / "bundle.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    (out / "bundle.md").write_text(markdown(rows))
    plot(rows, out / "bundle.png")


def markdown(rows: list[dict]) -> str:
    """The bundle table (``bundle.md``) from the rows of ``bundle.json``."""
    lines = ["| venv | MB | files | over torch alone |", "|---|---:|---:|---:|"]
    for r in rows:
        if r.get("mb") is None:
            lines.append(f"| {r['install']} | failed | | |")
        else:
            lines.append(
                f"| {r['install']} | {r['mb']:,} | {r['files']:,} | +{r['extra_mb']} MB, +{r['extra_files']:,} files |"
            )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ok = [r for r in rows[1:] if r.get("mb") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, what in ((axes[0], "mb", "venv size (MB)"), (axes[1], "files", "files")):
        ax.bar([r["install"][2:] for r in ok], [r[key] for r in ok])
        ax.axhline(rows[0][key], color="k", lw=1, label="torch alone")
        ax.set_title(what, fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.set_ylim(rows[0][key] * 0.9, None)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
