"""Per-call cost of the Recorder on the shipped pendulum actor, as a collector calls it (one frame, 1 thread).

Three variants, interleaved call by call in paired rounds:

- the bare actor;
- raw torch forward hooks registered once, writing the same 3 activations into the output TensorDict (the
  cheapest hand-written equivalent; it leaves hooks on the modules and does not pickle with the policy);
- ``Recorder(actor, 3 layers)`` (hooks only during each call, activations and the mask written into the output).

Reports per-call medians and the extra cost over the bare call, and the ratio of the Recorder's extra cost to
the raw hooks' extra cost (goal: <= 1.2).

    python benchmarks/recorder_overhead.py [--rounds 9] [--calls 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: agents/ and envs/
from agents.pendulum.nets import load_agent  # noqa: E402
from rlhook.rl import Recorder  # noqa: E402

LAYERS = ["module.0.module.act0", "module.0.module.act1", "module.0.module.out"]


def raw_hooks(actor) -> tuple[object, list]:
    """The actor with forward hooks registered once; each call's activations land in the output TensorDict."""
    store: dict[str, torch.Tensor] = {}
    handles = [
        actor.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: store.__setitem__(name, out.detach())
        )
        for name in LAYERS
    ]

    def call(td: TensorDict) -> TensorDict:
        out = actor(td)
        out.set("rlhook", TensorDict(dict(store), batch_size=out.batch_size))
        return out

    return call, handles


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    actor, _, _ = load_agent()
    frame = TensorDict({"observation": torch.randn(9)}, batch_size=[])
    rec = Recorder(actor, LAYERS)
    raw, handles = raw_hooks(actor)
    ref = rec(frame.clone())
    got = raw(frame.clone())
    for name in LAYERS:  # same activations before any timing
        torch.testing.assert_close(ref["rlhook", name], got["rlhook", name])
    for h in handles:
        h.remove()
    variants = {"bare": lambda td: actor(td), "raw hooks": None, "recorder": rec}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                if name == "raw hooks":
                    fn, handles = raw_hooks(actor)
                else:
                    fn, handles = variants[name], []
                tds = [frame.clone() for _ in range(args.calls)]
                t0 = time.perf_counter()
                for td in tds:
                    fn(td)
                times[name].append((time.perf_counter() - t0) / args.calls * 1e6)
                for h in handles:
                    h.remove()
    med = {k: statistics.median(v) for k, v in times.items()}
    extra_raw = [r - b for r, b in zip(times["raw hooks"], times["bare"])]
    extra_rec = [r - b for r, b in zip(times["recorder"], times["bare"])]
    ratios = [e / x for e, x in zip(extra_rec, extra_raw) if x > 0]
    print(
        f"\n{args.calls} calls per round, {args.rounds} paired rounds, torch {torch.__version__}, 1 thread\n"
    )
    print("| variant | us per call (median) | extra over bare, us (median, min-max) |\n|---|---:|---:|")
    print(f"| bare actor | {med['bare']:.0f} | - |")
    for name, extra in (("raw torch hooks, 3 layers", extra_raw), ("rlhook Recorder, 3 layers", extra_rec)):
        key = "raw hooks" if name.startswith("raw") else "recorder"
        print(
            f"| {name} | {med[key]:.0f} | {statistics.median(extra):.0f} ({min(extra):.0f}-{max(extra):.0f}) |"
        )
    if ratios:
        print(
            f"\nRecorder extra / raw-hook extra: {statistics.median(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
