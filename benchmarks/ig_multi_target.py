"""K per-target integrated-gradients maps: rlhook vs captum, tdhook and two hand-written references.

MLP width 256 x 6 layers, batch 64, K = 8 targets, 32 Gauss-Legendre steps, no convergence delta. Every
variant produces the same K maps (checked); times are medians of interleaved repeats in one process, and
ratios are to the faster hand-written reference. Then single-target IG: rlhook vs captum.

    python benchmarks/ig_multi_target.py [--repeats 7] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from rlhook.attribution import IntegratedGradients


def mlp(width: int = 256, depth: int = 6, n_out: int = 8) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def gl(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor((x + 1) / 2, dtype=torch.float32, device=device), torch.tensor(
        w / 2, dtype=torch.float32, device=device
    )


def reference(model: nn.Module, x: torch.Tensor, k: int, n: int, batched: bool) -> torch.Tensor:
    """Hand-written: one forward over all steps, then K backward passes (or one batched backward)."""
    alphas, weights = gl(n, x.device)
    path = (alphas[:, None, None] * x[None]).reshape(-1, x.shape[-1]).requires_grad_(True)
    out = model(path)[:, :k]  # (n*B, K)
    if batched:
        eye = torch.eye(k, device=x.device)[:, None, :].expand(k, out.shape[0], k)
        (g,) = torch.autograd.grad(out, path, grad_outputs=eye, is_grads_batched=True)
    else:
        g = torch.stack(
            [torch.autograd.grad(out[:, i].sum(), path, retain_graph=i < k - 1)[0] for i in range(k)]
        )
    g = (g.reshape(k, n, *x.shape) * weights[None, :, None, None]).sum(1)
    return g * x[None]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = mlp().to(dev).eval()
    k, n = args.k, args.steps
    x = torch.randn(args.batch, 256, device=dev)
    td = TensorDict(
        {"input": x, ("baseline", "input"): torch.zeros_like(x)}, batch_size=[args.batch], device=dev
    )
    many = lambda o: TensorDict({f"c{i}": o["output"][:, i] for i in range(k)}, batch_size=o.batch_size)

    def rlhook(batched: bool) -> Callable[[], torch.Tensor]:
        method = IntegratedGradients(many, n_steps=n, delta=False, batched=batched)

        def run() -> torch.Tensor:
            with method.prepare(model) as hooked:
                out = hooked(td.clone())
            return torch.stack([out["attr", f"c{i}", "input"] for i in range(k)])

        return run

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "reference: shared forward + K backward": lambda: reference(model, x, k, n, False),
        "reference: one batched backward": lambda: reference(model, x, k, n, True),
        "rlhook (K backward)": rlhook(False),
        "rlhook (batched backward)": rlhook(True),
    }
    try:
        from captum.attr import IntegratedGradients as CaptumIG

        cig = CaptumIG(model)
        variants["captum: one call per target"] = lambda: torch.stack(
            [cig.attribute(x, target=i, n_steps=n) for i in range(k)]
        )
        xk = x.repeat(k, 1)
        tk = torch.arange(k, device=dev).repeat_interleave(args.batch)
        variants["captum: K-times expanded batch"] = lambda: cig.attribute(xk, target=tk, n_steps=n).reshape(
            k, *x.shape
        )
    except ImportError:
        print("captum not installed: skipped")
    try:
        from tdhook.attribution import IntegratedGradients as TdIG

        def tdhook_run() -> torch.Tensor:
            maps = []
            for i in range(k):
                sel = lambda out, _, i=i: TensorDict(score=out["output"][..., i], batch_size=out.batch_size)
                with TdIG(init_attr_targets=sel, n_steps=n, multiply_by_inputs=True).prepare(model) as hooked:
                    maps.append(hooked(td.clone())["attr", "input"])
            return torch.stack(maps)

        variants["tdhook: one run per target"] = tdhook_run
    except ImportError:
        print("tdhook not installed: skipped (pip install tdhook --no-deps in a benchmark venv)")

    expected = variants["reference: shared forward + K backward"]()
    for name, fn in variants.items():
        got = fn()
        err = (got - expected).abs().max().item()
        scale = expected.abs().max().item()
        status = "ok" if err <= 1e-4 * scale + 1e-5 else f"MISMATCH (max abs err {err:.2e})"
        print(f"check {name:42s} {status}")

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved so machine noise hits every variant alike
        for name, fn in variants.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    best_ref = min(med["reference: shared forward + K backward"], med["reference: one batched backward"])
    fastest_rl = min(med["rlhook (K backward)"], med["rlhook (batched backward)"])
    print(
        f"\nK={k} targets, {n} steps, batch {args.batch}, MLP 256x6, torch {torch.__version__}, "
        f"{args.device}, {args.threads} threads, median of {args.repeats}\n"
    )
    print("| variant | median ms | vs best reference | rlhook speed-up |")
    print("|---|---:|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {t * 1e3:.1f} | {t / best_ref:.2f}x | {t / fastest_rl:.2f}x |")

    # single target: rlhook vs captum, same model and steps
    single = IntegratedGradients(lambda o: o["output"][:, 3], n_steps=n, delta=False)

    def rl_single() -> torch.Tensor:
        with single.prepare(model) as hooked:
            return hooked(td.clone())["attr", "input"]

    pair = {"rlhook single target": rl_single}
    if "captum: one call per target" in variants:
        pair["captum single target"] = lambda: cig.attribute(x, target=3, n_steps=n)
    st: dict[str, list[float]] = {name: [] for name in pair}
    for _ in range(args.repeats):
        for name, fn in pair.items():
            t0 = time.perf_counter()
            fn()
            st[name].append(time.perf_counter() - t0)
    ref_t = statistics.median(st["rlhook single target"])
    print("\n| single target | median ms | vs rlhook |\n|---|---:|---:|")
    for name, ts in st.items():
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {statistics.median(ts) / ref_t:.2f}x |")


if __name__ == "__main__":
    main()
