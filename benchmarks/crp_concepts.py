"""K CRP conditional heatmaps: one ConceptRelevance call vs K LRP calls with the other channels masked by hand.

The shipped shapes ResNet (canonized, LRP epsilon-plus), batch 16, K = 16 concepts (single channels of
``layer3``). Both variants give the same maps (checked); times are medians of interleaved rounds in one
process, with the spread (min-max of the per-round ratio).

    python benchmarks/crp_concepts.py [--repeats 5] [--threads 1] [--k 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tensordict import TensorDict

from agents.vision.shapes import make_shapes
from agents.vision.train import load_shapes_resnet
from rlhook.adapters.vision import ResNetCanonizer
from rlhook.attribution.lrp import LRP, Composite, ConceptRelevance


def target(out: TensorDict) -> torch.Tensor:
    return out["output"][..., 1]


def batched(model: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    method = ConceptRelevance(
        target,
        layer="layer3",
        concepts=list(range(k)),
        composite=Composite.epsilon_plus(),
        canonizers=[ResNetCanonizer()],
    )
    with method.prepare(model) as hooked:
        return hooked(TensorDict({"input": x}, [len(x)]))["crp", "input"]


def one_by_one(model: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    maps = []
    layer = model.get_submodule("layer3")
    method = LRP(target, composite=Composite.epsilon_plus(), canonizers=[ResNetCanonizer()])
    with method.prepare(model) as hooked:
        for c in range(k):
            mask = torch.zeros(1, layer[-1].conv2.out_channels, 1, 1)
            mask[0, c] = 1.0

            def keep(module, args, output, mask=mask):
                if output.requires_grad:
                    output.register_hook(lambda g: g * mask)

            handle = layer.register_forward_hook(keep)
            try:
                maps.append(hooked(TensorDict({"input": x}, [len(x)]))["attr", "input"])
            finally:
                handle.remove()
    return torch.stack(maps, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--k", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, x = load_shapes_resnet(), make_shapes(16, seed=3)["image"]
    torch.testing.assert_close(batched(model, x, args.k), one_by_one(model, x, args.k), rtol=1e-4, atol=1e-7)
    times: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    for _ in range(args.repeats):
        for name, fn in (("batched", batched), ("one_by_one", one_by_one)):
            t = time.perf_counter()
            fn(model, x, args.k)
            times[name].append(time.perf_counter() - t)
    ratios = [o / b for b, o in zip(times["batched"], times["one_by_one"])]
    print(f"K={args.k} concepts, batch 16, {args.threads} thread(s), {args.repeats} interleaved rounds")
    for name, ts in times.items():
        print(f"  {name:10s} median {statistics.median(ts):.3f} s")
    print(
        f"  one-by-one / batched: median {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
