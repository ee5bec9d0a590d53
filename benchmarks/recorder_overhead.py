"""Per-call cost of the Recorder on the shipped pendulum actor, as a collector calls it (one frame, 1 thread).

Three variants, each on its own copy of the actor (same weights), interleaved call by call:

- the bare actor;
- raw torch forward hooks registered once, writing the same 3 activations into the output TensorDict (the
  cheapest hand-written equivalent; it leaves hooks on the modules and does not pickle with the policy);
- ``Recorder(actor, 3 layers)`` (hooks only during each call; activations and the mask written into the output);
- tdhook's ``ActivationCaching`` as the policy, when tdhook is installed (hooks for its prepare block, the
  activations written into the output at ``("cache", name)``).

Every call of a variant is paired with the bare call next to it, so the machine's drift cancels: the table
gives the median extra cost per call over the bare actor with its quartiles over all calls, and the ratio of
the Recorder's extra to the raw hooks' extra per round (goal: <= 1.2), median and range over the rounds.

    python benchmarks/recorder_overhead.py [--rounds 9] [--calls 500]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: agents/ and envs/
from agents.pendulum.nets import load_agent  # noqa: E402
from rlhook.rl import Recorder  # noqa: E402

LAYERS = ["module.0.module.act0", "module.0.module.act1", "module.0.module.out"]


def raw_hooks(actor):
    """The actor with forward hooks registered once; each call's activations land in the output TensorDict."""
    store: dict[str, torch.Tensor] = {}
    for name in LAYERS:
        actor.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: store.__setitem__(name, out.detach())
        )

    def call(td: TensorDict) -> TensorDict:
        out = actor(td)
        out.set("rlhook", TensorDict(dict(store), batch_size=out.batch_size))
        return out

    return call


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    actor, _, _ = load_agent()
    variants = {
        "bare": actor,
        "raw": raw_hooks(copy.deepcopy(actor)),
        "rec": Recorder(copy.deepcopy(actor), LAYERS),
    }
    try:  # tdhook's ActivationCaching as a policy (its hooks live for the prepare block), when installed
        from tdhook.latent import ActivationCaching

        ctx = ActivationCaching(r"module\.0\.module\.(act0|act1|out)").prepare(copy.deepcopy(actor))
        variants["tdhook"] = ctx.__enter__()
    except ImportError:
        print("tdhook not installed: skipped")
    frame = TensorDict({"observation": torch.randn(9)}, batch_size=[])
    ref, got = variants["rec"](frame.clone()), variants["raw"](frame.clone())
    for name in LAYERS:  # same activations before any timing
        torch.testing.assert_close(ref["rlhook", name], got["rlhook", name])
    extra: dict[str, list[float]] = {k: [] for k in variants if k != "bare"}
    bare_us: list[float] = []
    ratios: list[float] = []
    clock = time.perf_counter
    with torch.no_grad():
        for r in range(args.rounds + 1):  # round 0 warms up
            round_extra: dict[str, list[float]] = {k: [] for k in extra}
            for i in range(args.calls):
                order = list(variants) if (i + r) % 2 == 0 else list(variants)[::-1]
                tds = {k: frame.clone() for k in order}
                took = {}
                for k in order:
                    t0 = clock()
                    variants[k](tds[k])
                    took[k] = (clock() - t0) * 1e6
                bare_us.append(took["bare"]) if r else None
                for k in round_extra:
                    round_extra[k].append(took[k] - took["bare"])
            if r:
                for k in extra:
                    extra[k] += round_extra[k]
                raw, rec = statistics.median(round_extra["raw"]), statistics.median(round_extra["rec"])
                if raw > 0:
                    ratios.append(rec / raw)
    print(f"\n{args.calls} calls per round, {args.rounds} rounds, torch {torch.__version__}, 1 thread\n")
    print("| variant | extra over bare, us per call (median) | quartiles |\n|---|---:|---:|")
    print(f"| bare actor | {statistics.median(bare_us):.0f} us per call | - |")
    names = {
        "raw": "raw torch hooks, 3 layers",
        "rec": "rlhook Recorder, 3 layers",
        "tdhook": "tdhook ActivationCaching, 3 layers",
    }
    for key in extra:
        name = names[key]
        q = statistics.quantiles(extra[key], n=4)
        print(f"| {name} | {statistics.median(extra[key]):.0f} | {q[0]:.0f} to {q[2]:.0f} |")
    if ratios:
        print(
            f"\nRecorder extra / raw-hook extra, per round: {statistics.median(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
