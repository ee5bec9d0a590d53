"""A Collector's frames per second with and without the rlhook Recorder (3 layers of the actor captured
into the rollout), against raw torch hooks writing the same keys, and with tdhook's ActivationCaching as the
policy when it is installed.

Real env (InvertedDoublePendulum-v5, MuJoCo), the shipped PPO actor (2 x 256 Tanh), one env, 1 thread.
Paired rounds: each round runs every variant once (the order rotates), and a variant's cost is its frames/s
against the bare actor's in the same round; the table gives the median over ``--repeats`` rounds of
``--frames`` frames each, and the range. End to end and noisy: the per-call figure of
``benchmarks/recorder_overhead.py`` is the stable one.

    python benchmarks/collector_overhead.py [--frames 2000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torchrl.collectors import Collector

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: agents/ and envs/
from agents.pendulum.nets import load_agent  # noqa: E402
from envs.pendulum import make_env  # noqa: E402
from rlhook.rl import Recorder  # noqa: E402

LAYERS = ["module.0.module.act0", "module.0.module.act1", "module.0.module.out"]


class RawHooks(TensorDictModuleBase):
    """The cheapest hand-written recorder: torch forward hooks registered once on a copy of the actor, the
    same 3 activations written into the rollout (what carrying the keys costs without any library)."""

    def __init__(self, actor):
        super().__init__()
        self.actor, self.store = copy.deepcopy(actor), {}
        for name in LAYERS:
            self.actor.get_submodule(name).register_forward_hook(
                lambda m, a, out, name=name: self.store.__setitem__(name, out.detach())
            )
        self.in_keys = list(actor.in_keys)
        self.out_keys = list(actor.out_keys) + [("rlhook", n) for n in LAYERS]

    def forward(self, td):
        out = self.actor(td)
        out.set("rlhook", TensorDict(dict(self.store), batch_size=out.batch_size))
        return out


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
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    actor, _, stats = load_agent()
    variants = {
        "bare actor": actor,
        "raw torch hooks registered once, 3 layers": RawHooks(actor),
        "rlhook Recorder, 3 layers": Recorder(actor, LAYERS),
    }
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
    failed: set[str] = set()
    for r in range(args.repeats):
        names = list(variants)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name in failed:
                continue
            try:
                res[name].append(fps(variants[name], args.frames, stats))
            except Exception as exc:  # a rival that cannot run inside a Collector is reported, not hidden
                print(f"{name}: failed inside Collector ({type(exc).__name__}: {str(exc)[:120]})")
                failed.add(name)
    print(
        f"\n{args.frames} frames per run, {args.repeats} paired rounds, torch {torch.__version__}, "
        f"{args.threads} thread\n"
    )
    print("| policy in the Collector | frames/s (median) | cost vs bare, same round (median, min to max) |")
    print("|---|---:|---:|")
    bare = res["bare actor"]
    for name, vals in res.items():
        if name in failed or not vals:
            continue
        cost = [b / v - 1 for b, v in zip(bare, vals)]
        spread = (
            "-"
            if name == "bare actor"
            else (f"{statistics.median(cost):+.1%} ({min(cost):+.1%} to {max(cost):+.1%})")
        )
        print(f"| {name} | {statistics.median(vals):.0f} | {spread} |")


if __name__ == "__main__":
    main()
