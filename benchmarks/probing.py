"""Linear probes on the activations of 3 modules: rlhook's fast path vs scikit-learn vs tdhook's Probing.

Synthetic but realistic data: 9-d observations (the inverted double pendulum's size) pushed through a
3-layer tanh MLP of width 256 (the TorchRL tutorial actor's shape); the three tanh outputs are probed, each
rows x 256. Labels: a smooth value-like regression target and a 4-class action-like label, both functions of
the observation. Train on 80% of the rows, score on the rest. Every variant runs the model once on the
train and once on the test rows to read the activations (hooks), fits one probe per module and scores it.

- ridge: rlhook ``Probing(estimator="ridge")`` (closed form from X^T X) vs ``sklearn.linear_model.Ridge``
  vs tdhook ``Probing`` + ``ProbeManager(Ridge)``; same alpha.
- logistic: rlhook ``Probing(task="classification")`` (L-BFGS in torch) vs ``LogisticRegression`` (lbfgs)
  vs tdhook with ``LogisticRegression``; same C and iteration cap.

One run, median of ``--repeats`` interleaved repeats; ratios are to rlhook (higher = slower than rlhook).
Scores are checked to agree. tdhook is optional (``pip install --no-deps tdhook``, e.g. in a bench venv).

    python benchmarks/probing.py [--rows 100000] [--features 256] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import nn

from rlhook.latent import Probing, accuracy, r2

PATHS = ["1", "3", "5"]  # the three Tanh outputs


def actor(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(9, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
    )


def make_data(rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(rows, 9, generator=g) * torch.tensor([1.0, 0.5, 0.5, 1, 1, 2, 2, 0.3, 0.3])
    value = (
        -(obs[:, 1] ** 2 + obs[:, 2] ** 2)
        + 0.3 * torch.sin(obs[:, 5])
        + 0.05 * torch.randn(rows, generator=g)
    )
    score = obs[:, 5] + 0.5 * obs[:, 6] - obs[:, 1]
    action = torch.bucketize(score, torch.quantile(score, torch.tensor([0.25, 0.5, 0.75])))
    return obs, value, action


def sklearn_variant(model: nn.Module, task: str, alpha: float, C: float, max_iter: int) -> Callable:
    from sklearn.linear_model import LogisticRegression, Ridge

    def run(train: TensorDict, test: TensorDict) -> dict[str, float]:
        scores = {}
        acts_tr, acts_te = activations(model, train["input"]), activations(model, test["input"])
        for p in PATHS:
            est = Ridge(alpha=alpha) if task == "ridge" else LogisticRegression(C=C, max_iter=max_iter)
            est.fit(acts_tr[p].numpy(), train["labels"].numpy())
            pred = torch.as_tensor(est.predict(acts_te[p].numpy()))
            scores[p] = r2(test["labels"], pred) if task == "ridge" else accuracy(test["labels"], pred)
        return scores

    return run


def activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}
    handles = [
        model[int(p)].register_forward_hook(lambda m, a, o, p=p: store.__setitem__(p, o.detach()))
        for p in PATHS
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return store


def rlhook_variant(model: nn.Module, task: str, alpha: float, C: float, max_iter: int) -> Callable:
    def run(train: TensorDict, test: TensorDict) -> dict[str, float]:
        kind = "regression" if task == "ridge" else "classification"
        estimator = None if task == "ridge" else _logistic(C, max_iter)
        probe = Probing(PATHS, task=kind, alpha=alpha, C=C, estimator=estimator)
        with torch.no_grad(), probe.prepare(model):
            probe.fit(train)
            out = probe.score(test.clone(False))
        metric = "r2" if task == "ridge" else "accuracy"
        return {p: float(out["probe", p, metric][0]) for p in PATHS}

    return run


def _logistic(C: float, max_iter: int):
    from rlhook.latent import LogisticProbe

    return LogisticProbe(C, max_iter=max_iter)


def tdhook_variant(model: nn.Module, task: str, alpha: float, C: float, max_iter: int) -> Callable | None:
    try:
        from sklearn.linear_model import LogisticRegression, Ridge
        from tdhook.latent.probing import ProbeManager
        from tdhook.latent.probing import Probing as TdProbing
    except ImportError:
        return None
    from tensordict import NonTensorData

    def run(train: TensorDict, test: TensorDict) -> dict[str, float]:
        if task == "ridge":
            cls, kwargs = Ridge, {"alpha": alpha}
            metric = lambda pred, y: {"score": r2(y, torch.as_tensor(pred))}
        else:
            cls, kwargs = LogisticRegression, {"C": C, "max_iter": max_iter}
            metric = lambda pred, y: {"score": accuracy(y, torch.as_tensor(pred))}
        manager = ProbeManager(cls, kwargs, metric)
        pattern = "|".join(f"{p}$" for p in PATHS)
        context = TdProbing(pattern, manager.probe_factory, additional_keys=["labels", "step_type"])
        with torch.no_grad(), context.prepare(model) as hooked:
            for td, step in ((train, "fit"), (test, "predict")):
                td = td.clone(False)
                td["step_type"] = NonTensorData(step)
                hooked(td)
        res = manager.results
        return {
            p: float(res["predict", next(k for k in res["predict"].keys() if k.startswith(p + "_"))]["score"])
            for p in PATHS
        }

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--tasks", default="ridge,logistic")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = actor(args.features)
    obs, value, action = make_data(args.rows)
    n_train = int(0.8 * args.rows)
    rows = []
    print(
        f"# probing: {args.rows} rows x {args.features} features x {len(PATHS)} modules, torch {torch.__version__}, "
        f"{args.threads} threads, median of {args.repeats}\n"
    )
    for task in args.tasks.split(","):
        labels = value if task == "ridge" else action
        train = TensorDict({"input": obs[:n_train], "labels": labels[:n_train]}, [n_train])
        test = TensorDict({"input": obs[n_train:], "labels": labels[n_train:]}, [args.rows - n_train])
        variants = {
            "rlhook": rlhook_variant(model, task, args.alpha, args.C, args.max_iter),
            "scikit-learn": sklearn_variant(model, task, args.alpha, args.C, args.max_iter),
        }
        td_run = tdhook_variant(model, task, args.alpha, args.C, args.max_iter)
        if td_run is not None:
            variants["tdhook"] = td_run
        times: dict[str, list[float]] = {k: [] for k in variants}
        scores: dict[str, dict[str, float]] = {}
        failed: dict[str, str] = {}
        for _ in range(args.repeats):
            for name, run in variants.items():
                if name in failed:
                    continue
                t0 = time.perf_counter()
                try:
                    scores[name] = run(train, test)
                except Exception as exc:  # a changed tdhook API must not hide the other figures
                    failed[name] = f"{type(exc).__name__}: {exc}"[:120]
                    continue
                times[name].append(time.perf_counter() - t0)
                print(f"  {task:8s} {name:12s} {times[name][-1]:8.2f} s", file=sys.stderr, flush=True)
        base = statistics.median(times["rlhook"])
        ref = scores["rlhook"]
        for name in variants:
            if name in failed:
                rows.append((task, name, "failed", "", failed[name]))
                continue
            med = statistics.median(times[name])
            diff = max(abs(scores[name][p] - ref[p]) for p in PATHS)
            tol = 1e-3 if task == "ridge" else 0.01
            agree = "ok" if diff <= tol else f"DIFFERS by {diff:.3g}"
            shown = " / ".join(f"{scores[name][p]:.4f}" for p in PATHS)
            rows.append((task, name, f"{med:.2f}", f"{med / base:.2f}", f"{shown} ({agree})"))
    print("| probe | library | time (s) | ratio to rlhook | test score per module (agreement) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
