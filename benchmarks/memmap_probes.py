"""Streaming probes over a memory-mapped activation store larger than this machine's spare RAM.

Builds (once) a TorchRL ReplayBuffer on LazyMemmapStorage holding ``--rows`` rows of ``--dim`` float32
activations (synthetic: correlated Gaussian features, a linear target with noise and its sign as a class label;
10 million x 256 is about 10 GB), then runs each task in its own process and reports rows/s and that
process's peak resident set (``ru_maxrss``, which counts mapped file pages that were touched):

- ``ridge``: ``fit_probe(RidgeProbe)``, one exact pass;
- ``logistic``: ``fit_probe(LogisticProbe)``, ``--logistic-iter`` L-BFGS steps (one pass per evaluation);
- ``cka``: exact linear CKA of two column halves, one pass;
- ``sgd-regressor`` / ``sgd-classifier``: scikit-learn's ``partial_fit`` over the same chunks (one epoch), the
  streaming baseline; its R^2 / accuracy on held-out rows printed beside ours.

    python benchmarks/memmap_probes.py --folder /some/disk/store [--rows 10000000] [--dim 256]

The store is kept in ``--folder`` for later runs (``--remove`` deletes it after).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = ["ridge", "sgd-regressor", "logistic", "sgd-classifier", "cka"]
X, Y, C = ("rlhook", "act"), "target", "label"


def build(folder: Path, rows: int, dim: int, chunk: int = 65_536) -> None:
    from tensordict import TensorDict
    from torchrl.data import LazyMemmapStorage, ReplayBuffer
    from tqdm import tqdm

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(dim, dim, generator=g) / dim**0.5
    w = torch.randn(dim, generator=g)
    rb = ReplayBuffer(storage=LazyMemmapStorage(rows, scratch_dir=folder), batch_size=1)
    for i in tqdm(range(0, rows, chunk), desc="writing store", unit="chunk"):
        n = min(chunk, rows - i)
        x = torch.randn(n, dim, generator=g) @ mix
        y = x @ w + 0.5 * torch.randn(n, generator=g)
        rb.extend(TensorDict({X: x, Y: y, C: (y > 0).long()}, [n]))
    (folder / "complete").write_text(json.dumps({"rows": rows, "dim": dim}))


def run_task(folder: Path, task: str, chunk: int, logistic_iter: int, held_out: int) -> dict:
    from tensordict import TensorDict

    from rlhook.latent import LogisticProbe, RidgeProbe
    from rlhook.latent.stores import chunks, fit_probe, rows_of, sample, stream_cka

    torch.set_num_threads(2)
    store = TensorDict.load_memmap(folder)
    rows = rows_of(store)
    test = sample(store, [X, Y, C], held_out, seed=1)  # in-sample rows too, for scoring only
    t0 = time.perf_counter()
    quality = None
    if task == "ridge":
        probe = fit_probe(RidgeProbe(alpha=1.0), store, X, Y, chunk_size=chunk)
        pred = probe.predict(test.get(X))
        quality = 1 - float((pred - test[Y]).pow(2).mean() / test[Y].var())
        passes = 1
    elif task == "logistic":
        probe = LogisticProbe(C=1.0, max_iter=logistic_iter)
        fit_probe(probe, store, X, C, chunk_size=chunk)
        quality = float((probe.predict(test.get(X)) == test[C]).float().mean())
        passes = 1 + probe.n_evals_  # the classes, then one per loss evaluation
    elif task == "cka":
        quality, passes = stream_cka(store, X, X, chunk_size=chunk), 1  # value 1: the pass is what is timed
    else:
        from sklearn.linear_model import SGDClassifier, SGDRegressor

        est = SGDRegressor(random_state=0) if task == "sgd-regressor" else SGDClassifier(random_state=0)
        key = Y if task == "sgd-regressor" else C
        for c in chunks(store, [X, key], chunk_size=chunk, desc=task):
            x, y = c.get(X).numpy(), c.get(key).numpy()
            est.partial_fit(x, y) if task == "sgd-regressor" else est.partial_fit(x, y, classes=[0, 1])
        quality = float(est.score(test.get(X).numpy(), test.get(key).numpy()))
        passes = 1
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB (Linux reports kB)
    return {
        "row_passes_per_s": rows * passes / seconds,
        "task": task,
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "passes": passes,
        "quality": quality,
        "peak_rss_mb": rss,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--folder", type=Path, required=True)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--chunk", type=int, default=65_536)
    p.add_argument("--logistic-iter", type=int, default=10)
    p.add_argument("--held-out", type=int, default=20_000)
    p.add_argument("--tasks", nargs="*", default=TASKS)
    p.add_argument("--remove", action="store_true")
    p.add_argument("--task", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.task:  # child process
        print(json.dumps(run_task(args.folder, args.task, args.chunk, args.logistic_iter, args.held_out)))
        return
    done = args.folder / "complete"
    if not done.exists() or json.loads(done.read_text()) != {"rows": args.rows, "dim": args.dim}:
        shutil.rmtree(args.folder, ignore_errors=True)
        t0 = time.perf_counter()
        build(args.folder, args.rows, args.dim)
        print(f"store written in {time.perf_counter() - t0:.0f} s")
    size = sum(f.stat().st_size for f in args.folder.rglob("*.memmap")) / 1e9
    print(
        f"store: {args.rows:,} rows x {args.dim} float32, {size:.1f} GB on disk in {len(list(args.folder.rglob('*.memmap')))} files"
    )
    results = []
    for task in args.tasks:
        cmd = [
            sys.executable,
            __file__,
            "--folder",
            str(args.folder),
            "--task",
            task,
            "--chunk",
            str(args.chunk),
            "--logistic-iter",
            str(args.logistic_iter),
            "--held-out",
            str(args.held_out),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        r = results[-1]
        print(
            f"{r['task']:>15}: {r['rows_per_s'] / 1e6:6.2f} M rows/s, {r['row_passes_per_s'] / 1e6:6.2f} M rows/s per "
            f"pass ({r['passes']} passes, {r['seconds']:6.1f} s), peak RSS "
            f"{r['peak_rss_mb']:6.0f} MB, quality {r['quality']:.4f}",
            flush=True,
        )
    by = {r["task"]: r for r in results}
    for ours, theirs in (("ridge", "sgd-regressor"), ("logistic", "sgd-classifier")):
        if ours in by and theirs in by:
            print(f"{ours} / {theirs} throughput: {by[ours]['rows_per_s'] / by[theirs]['rows_per_s']:.2f}x")
    if args.remove:
        shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
