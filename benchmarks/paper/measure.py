"""Launch one task process under ``/usr/bin/time -v`` and read back wall time, CPU and peak RSS."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_FIELDS = {
    "user_s": r"User time \(seconds\): ([\d.]+)",
    "sys_s": r"System time \(seconds\): ([\d.]+)",
    "cpu_pct": r"Percent of CPU this job got: (\d+)%",
    "rss_mb": r"Maximum resident set size \(kbytes\): (\d+)",
    "wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
}


def parse_time(text: str) -> dict:
    """The fields of ``/usr/bin/time -v`` this benchmark reports (seconds, percent, MB)."""
    out: dict = {}
    for key, pattern in _FIELDS.items():
        m = re.search(pattern, text)
        if m is None:
            continue
        v = m.group(1)
        if key == "wall":
            parts = [float(p) for p in v.split(":")]
            out["wall_s"] = sum(p * 60**i for i, p in enumerate(reversed(parts)))
        elif key == "rss_mb":
            out[key] = int(v) / 1024
        else:
            out[key] = float(v)
    if "user_s" in out and "sys_s" in out:
        out["cpu_s"] = out["user_s"] + out["sys_s"]
    return out


def env(threads: int) -> dict:
    e = dict(os.environ)
    e.update(
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONWARNINGS="ignore",
    )
    return e


def launch(
    python: str,
    module: str,
    lib: str,
    phase: str,
    config: dict,
    seed: int,
    *,
    threads: int = 2,
    device: str = "cpu",
    repeats: int = 1,
    save: str | None = None,
    timeout: float = 900,
) -> dict:
    """Run one task process; return its measurements (``error`` set if it failed)."""
    args = [python, "-m", module, "--lib", lib, "--phase", phase, "--seed", str(seed), "--device", device]
    args += ["--repeats", str(repeats)]
    if module.endswith("collector"):
        threads = 1  # the collector task runs on one thread, as TorchRL's own benchmarks do
    args += ["--threads", str(threads)]
    for k, v in config.items():
        args += [f"--{k}", str(v)]
    if save:
        args += ["--save", save]
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        try:
            proc = subprocess.run(
                ["/usr/bin/time", "-v", "-o", tf.name, *args],
                cwd=ROOT,
                env=env(threads),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        row = parse_time(Path(tf.name).read_text())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        row["error"] = f"exit {proc.returncode}: " + " | ".join(tail)[-400:]
        print(f"    {lib} {phase} failed: {row['error']}", file=sys.stderr)
        return row
    row.update(json.loads(lines[-1][len("RESULT ") :]))
    return row
