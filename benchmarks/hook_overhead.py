"""Instrumentation overhead: a bare forward vs raw torch hooks vs rlhook (nothing declared, caching 3 layers)
vs tdhook and nnsight caching the same 3 layers (when installed), all in one process, interleaved.

Model: MLP 256 x 6 (Linear + ReLU blocks). Two batch sizes: 1 (a policy acting in one env: overhead dominates)
and 256 (a training batch). Times are medians over interleaved repeats; ratios are to the bare forward.

    python benchmarks/hook_overhead.py [--repeats 15] [--calls 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import nn

from rlhook import HookedModule
from rlhook.latent import ActivationCaching

LAYERS = ["blocks.1", "blocks.3", "blocks.5"]


class Net(nn.Module):
    def __init__(self, width: int = 256, depth: int = 6) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth))
        self.head = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def variants(model: Net, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    td = TensorDict({"input": x}, batch_size=x.shape[:1])
    out: dict[str, Callable[[], object]] = {"bare forward": lambda: model(x)}

    cache: dict[str, torch.Tensor] = {}
    handles = []

    def raw() -> object:
        for name in LAYERS:
            mod = model.get_submodule(name)
            handles.append(
                mod.register_forward_hook(lambda m, a, o, n=name: cache.__setitem__(n, o.detach()))
            )
        try:
            return model(x)
        finally:
            while handles:
                handles.pop().remove()

    out["raw torch hooks, 3 layers"] = raw
    hooked = HookedModule(model)
    out["rlhook HookedModule, nothing declared"] = lambda: hooked(td.copy())
    caching = ActivationCaching(LAYERS)

    def rl_cache() -> object:
        with caching.prepare(model) as h:
            return h(td.copy())

    out["rlhook ActivationCaching, 3 layers (prepare per call)"] = rl_cache
    ctx = caching.prepare(model)
    prepared = ctx.__enter__()
    out["rlhook ActivationCaching, 3 layers (prepared once)"] = lambda: prepared(td.copy())
    out["_close"] = lambda: ctx.__exit__(None, None, None)  # type: ignore[assignment]

    def rl_run() -> object:
        with hooked.run(td.copy()) as run:
            saved = [run.save(p) for p in LAYERS]
        return [s.resolve() for s in saved]

    out["rlhook run() + 3 saves"] = rl_run
    try:
        from tdhook.latent import ActivationCaching as TdCaching

        td_caching = TdCaching(r"blocks\.(1|3|5)")

        def td_cache() -> object:
            with td_caching.prepare(model) as h:
                return h(td.copy())

        out["tdhook ActivationCaching, 3 layers (prepare per call)"] = td_cache
    except ImportError:
        print("tdhook not installed: skipped")
    try:
        from nnsight import NNsight

        nn_model = NNsight(model)

        def nn_cache() -> object:
            with nn_model.trace(x):
                a = nn_model.blocks[1].output.save()
                b = nn_model.blocks[3].output.save()
                c = nn_model.blocks[5].output.save()
            return [a, b, c]

        out["nnsight trace + 3 saves"] = nn_cache
    except ImportError:
        print("nnsight not installed: skipped")
    return out


def check(model: Net, x: torch.Tensor, fns: dict[str, Callable[[], object]]) -> None:
    """Every caching variant stores the same activations."""
    ref = {}
    h = x
    for i, block in enumerate(model.blocks):
        h = block(h)
        ref[f"blocks.{i}"] = h
    got = fns["rlhook ActivationCaching, 3 layers (prepare per call)"]()
    for name in LAYERS:
        torch.testing.assert_close(got["cache", name], ref[name])
    for name, fn in fns.items():
        if name.startswith("tdhook"):
            out = fn()
            for layer in LAYERS:
                torch.testing.assert_close(out["cache", layer], ref[layer])
        if name.startswith("nnsight"):
            for layer, saved in zip(LAYERS, fn()):
                torch.testing.assert_close(getattr(saved, "value", saved), ref[layer])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Net().eval()
    print(
        f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} x {args.calls} calls\n"
    )
    for batch in (1, 256):
        x = torch.randn(batch, 256)
        fns = variants(model, x)
        close = fns.pop("_close")
        with torch.no_grad():
            check(model, x, fns)
            times: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        fn()
                    times[name].append((time.perf_counter() - t0) / args.calls)
        close()
        med = {n: statistics.median(t) for n, t in times.items()}
        bare = med["bare forward"]
        print(f"batch {batch}\n\n| variant | median us/call | vs bare forward |\n|---|---:|---:|")
        for name, t in med.items():
            print(f"| {name} | {t * 1e6:.0f} | {t / bare:.2f}x |")
        print()


if __name__ == "__main__":
    main()
