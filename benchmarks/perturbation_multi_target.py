"""K per-target KernelShap and Shapley-sampling maps: rlhook (one call, shared forwards) vs captum (one call per
target), then a single target on both, all in one process.

MLP 64 -> 256 x 3 -> 8 (float32), batch 8, 16 features (groups of 4 inputs), KernelShap with 200 samples,
Shapley sampling with 10 orderings. captum runs at its fastest setting (``perturbations_per_eval`` = all
samples of an example for KernelShap, one whole ordering for Shapley sampling). Rounds are paired and
interleaved (the variants' order rotates each round); per-round ratios captum / rlhook are reported as median
and min-max. Maps are checked equal to captum's with the same seeds and masks before timing.

    python benchmarks/perturbation_multi_target.py [--repeats 9] [--threads 1] [--k 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import nn

from rlhook.attribution import KernelShap, ShapleyValueSampling

SEED = 0


def mlp(n_in: int = 64, width: int = 256, depth: int = 3, n_out: int = 8) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--kernel-samples", type=int, default=200)
    p.add_argument("--orderings", type=int, default=10)
    args = p.parse_args()
    warnings.filterwarnings("ignore")  # captum warns that Lime/KernelShap fit one model per example
    torch.set_num_threads(args.threads)
    from captum.attr import KernelShap as CaptumKernelShap
    from captum.attr import ShapleyValueSampling as CaptumShapley

    torch.manual_seed(0)
    model = mlp().eval()
    k, n_ks, n_sv = args.k, args.kernel_samples, args.orderings
    x = torch.randn(args.batch, 64)
    mask = torch.arange(64) // 4
    n_features = int(mask.max()) + 1
    td = TensorDict({"input": x}, batch_size=[args.batch])
    many = lambda o: TensorDict({f"c{i}": o["output"][:, i] for i in range(k)}, batch_size=o.batch_size)
    one = lambda o: o["output"][:, 0]

    def ours(method) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with method.prepare(model) as hooked:
                out = hooked(td.clone())
            if method.options.target is one:
                return out["attr", "input"][None]
            return torch.stack([out["attr", f"c{i}", "input"] for i in range(k)])

        return run

    cks, csv = CaptumKernelShap(model), CaptumShapley(model)

    def captum_ks(targets: range) -> Callable[[], torch.Tensor]:
        return lambda: torch.stack(
            [
                cks.attribute(
                    x, target=t, n_samples=n_ks, feature_mask=mask[None], perturbations_per_eval=n_ks
                )
                for t in targets
            ]
        )

    def captum_sv(targets: range) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            maps = []
            for t in targets:
                torch.manual_seed(SEED)
                maps.append(
                    csv.attribute(
                        x,
                        target=t,
                        n_samples=n_sv,
                        feature_mask=mask[None],
                        perturbations_per_eval=n_features,
                    )
                )
            return torch.stack(maps)

        return run

    ks_many = KernelShap(many, n_samples=n_ks, feature_mask=mask, seed=SEED)
    sv_many = ShapleyValueSampling(many, n_samples=n_sv, feature_mask=mask, seed=SEED)
    pairs = {
        f"KernelShap, K = {k}": (ours(ks_many), captum_ks(range(k))),
        f"Shapley sampling, K = {k}": (ours(sv_many), captum_sv(range(k))),
        "KernelShap, K = 1": (
            ours(KernelShap(one, n_samples=n_ks, feature_mask=mask, seed=SEED)),
            captum_ks(range(1)),
        ),
        "Shapley sampling, K = 1": (
            ours(ShapleyValueSampling(one, n_samples=n_sv, feature_mask=mask, seed=SEED)),
            captum_sv(range(1)),
        ),
    }

    # the same maps: Shapley sampling directly (same orderings); KernelShap per example (captum draws anew
    # for each example of a batch, rlhook shares one draw), so captum is reseeded before each example
    torch.testing.assert_close(
        pairs[f"Shapley sampling, K = {k}"][0](), captum_sv(range(k))(), rtol=1e-4, atol=1e-5
    )
    ref = []
    for i in range(args.batch):
        torch.manual_seed(SEED)
        ref.append(cks.attribute(x[i : i + 1], target=0, n_samples=n_ks, feature_mask=mask[None]))
    torch.testing.assert_close(pairs[f"KernelShap, K = {k}"][0]()[0], torch.cat(ref), rtol=1e-3, atol=1e-4)
    print("maps equal to captum's (same seeds and masks)")

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in pairs}
    for r in range(args.repeats + 1):  # round 0 warms up
        names = list(pairs)
        names = names[r % len(names) :] + names[: r % len(names)]
        for name in names:
            a, b = pairs[name]
            pair = (timed(a), timed(b)) if r % 2 else tuple(reversed((timed(b), timed(a))))
            if r:
                times[name].append(pair)

    print(
        f"batch {args.batch}, {n_features} features, {args.threads} thread(s), {args.repeats} paired rounds"
    )
    print(f"{'task':<28} {'rlhook ms':>10} {'captum ms':>10} {'captum / rlhook':>16} {'min-max':>14}")
    for name, rounds in times.items():
        ratios = [c / o for o, c in rounds]
        ms_o = statistics.median(o for o, _ in rounds) * 1e3
        ms_c = statistics.median(c for _, c in rounds) * 1e3
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{name:<28} {ms_o:>10.1f} {ms_c:>10.1f} {statistics.median(ratios):>15.2f}x {spread:>14}")


if __name__ == "__main__":
    main()
