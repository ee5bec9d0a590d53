"""A Collector's frames per second with and without the rlhook Recorder (3 layers of the actor captured
into the rollout), and with tdhook's ActivationCaching as the policy when it is installed.

Real env (InvertedDoublePendulum-v5, MuJoCo), the shipped PPO actor (2 x 256 Tanh), one env, 1 thread.
Variants are interleaved; medians of ``--repeats`` runs of ``--frames`` frames each.

    python benchmarks/collector_overhead.py [--frames 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torchrl.collectors import Collector

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: agents/ and envs/
from agents.pendulum.nets import load_agent  # noqa: E402
from envs.pendulum import make_env  # noqa: E402
from rlhook.rl import Recorder  # noqa: E402

LAYERS = ["module.0.module.act0", "module.0.module.act1", "module.0.module.out"]


def fps(policy, frames: int, obs_stats) -> float:
    collector = Collector(
        make_env(seed=0, obs_stats=obs_stats, physics=False),
        policy,
        frames_per_batch=frames,
        total_frames=frames,
        auto_register_policy_transforms=False,
    )
    t0 = time.perf_counter()
    for batch in collector:
        n = batch.numel()
    dt = time.perf_counter() - t0
    collector.shutdown()
    return n / dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    actor, _, stats = load_agent()
    variants = {"bare actor": actor, "rlhook Recorder, 3 layers": Recorder(actor, LAYERS)}
    try:
        from tdhook.latent import ActivationCaching as TdCaching

        ctx = TdCaching(r"module\.0\.module\.(act0|act1|out)").prepare(actor)
        variants["tdhook ActivationCaching, 3 layers"] = ctx.__enter__()
    except ImportError:
        print("tdhook not installed: skipped")
    batch = next(
        iter(
            Collector(
                make_env(seed=0, obs_stats=stats),
                variants["rlhook Recorder, 3 layers"],
                frames_per_batch=50,
                total_frames=50,
            )
        )
    )
    assert all(("rlhook", n) in batch.keys(True) for n in LAYERS)
    res: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, policy in variants.items():
            try:
                res[name].append(fps(policy, args.frames, stats))
            except Exception as exc:  # a rival that cannot run inside a Collector is reported, not hidden
                print(f"{name}: failed inside Collector ({type(exc).__name__}: {str(exc)[:120]})")
                res[name] = []
                break
    base = statistics.median(res["bare actor"])
    print(
        f"\n{args.frames} frames per run, median of {args.repeats}, torch {torch.__version__}, {args.threads} thread\n"
    )
    print("| policy in the Collector | frames/s | overhead vs bare |\n|---|---:|---:|")
    for name, vals in res.items():
        if vals:
            m = statistics.median(vals)
            print(f"| {name} | {m:.0f} | {base / m - 1:+.1%} |")


if __name__ == "__main__":
    main()
