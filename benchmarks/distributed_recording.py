"""Frames per second of TorchRL's multi-worker collectors with and without the rlhook Recorder.

The shipped pendulum actor (2 x 256 Tanh) on InvertedDoublePendulum-v5 (MuJoCo), one env per worker, one
thread per worker, in three set-ups: TorchRL's ``RayCollector`` with 1 and 2 remote collectors on a local Ray
cluster, and ``MultiSyncCollector`` with 2 spawned workers. In each set-up the bare actor and the Recorder
(3 layers written into the rollout) alternate, round after round; the paired ratio per round and its spread
are reported (start-up of workers and the Ray cluster is excluded: each collector is built, warmed up by one
batch, then timed over ``--batches`` batches).

    python benchmarks/distributed_recording.py [--rounds 5] [--batches 5] [--frames 400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: agents/ and envs/
from agents.pendulum.nets import load_agent  # noqa: E402
from envs.pendulum import make_env  # noqa: E402
from rlhook.rl import Recorder  # noqa: E402

LAYERS = ["module.0.module.act0", "module.0.module.act1", "module.0.module.out"]


def make(kind: str, policy, workers: int, frames: int, batches: int, stats):
    fns = [lambda seed=seed: make_env(seed=seed, obs_stats=stats, physics=False) for seed in range(workers)]
    total = frames * (batches + 1)
    if kind == "ray":
        from torchrl.collectors.distributed import RayCollector

        return RayCollector(
            fns,
            policy,
            num_collectors=workers,
            frames_per_batch=frames,
            total_frames=total,
            remote_configs={"num_cpus": 1},
            sync=True,
        )
    from torchrl.collectors import MultiSyncCollector

    return MultiSyncCollector(fns, policy, frames_per_batch=frames, total_frames=total)


def fps(kind: str, policy, workers: int, frames: int, batches: int, stats) -> float:
    collector = make(kind, policy, workers, frames, batches, stats)
    it = iter(collector)
    next(it)  # workers started, policy copied, env reset
    t0 = time.perf_counter()
    n = sum(next(it).numel() for _ in range(batches))
    dt = time.perf_counter() - t0
    collector.shutdown(**({"shutdown_ray": False} if kind == "ray" else {}))
    return n / dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--frames", type=int, default=400)
    args = p.parse_args()
    import ray

    torch.set_num_threads(1)
    actor, _, stats = load_agent()
    policies = {"bare": actor, "recorder": Recorder(actor, LAYERS)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    setups = [("ray", 1), ("ray", 2), ("multisync", 2)]
    rows = []
    try:
        for kind, workers in setups:
            ratios, bare, rec = [], [], []
            for r in range(args.rounds):
                order = ["bare", "recorder"] if r % 2 == 0 else ["recorder", "bare"]
                got = {k: fps(kind, policies[k], workers, args.frames, args.batches, stats) for k in order}
                bare.append(got["bare"])
                rec.append(got["recorder"])
                ratios.append(got["recorder"] / got["bare"])
            rows.append((kind, workers, bare, rec, ratios))
            print(f"{kind} x{workers}: ratios {[f'{x:.3f}' for x in ratios]}", flush=True)
    finally:
        ray.shutdown()
    print(
        f"\n{args.batches} batches of {args.frames} frames per run, {args.rounds} paired rounds, torch "
        f"{torch.__version__}, 1 thread per worker\n"
    )
    print("| collector | workers | bare frames/s | Recorder frames/s | Recorder / bare (median, min-max) |")
    print("|---|---:|---:|---:|---:|")
    for kind, workers, bare, rec, ratios in rows:
        name = "RayCollector" if kind == "ray" else "MultiSyncCollector"
        print(
            f"| {name} | {workers} | {statistics.median(bare):.0f} | {statistics.median(rec):.0f} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
        )


if __name__ == "__main__":
    main()
