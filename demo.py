"""The main job (`make demo`): write the report folders and print where they are.

    python demo.py [--out reports] [--only core|pendulum|chess] [--train-frames N]

- core: a small CNN trained here on scikit-learn's bundled 8x8 digits; integrated-gradients maps of all 10
  class logits from one call (one shared forward over the path), a layer cache and a get-set patch.
- pendulum: the inverted-double-pendulum PPO agent (probes while it trains, saliency over an episode,
  PPO-loss attributions, a steering experiment), when its report module is present.
- chess: the Leela-style network (board heatmaps, probes, patching), when its report module is present.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn

from rlhook import HookedModule
from rlhook.attribution import IntegratedGradients
from rlhook.latent import ActivationCaching
from rlhook.plot import image_grid


def digits_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(512, 10),
    )


def core_report(out: Path) -> dict:
    """Train a digits CNN for a few seconds, explain all 10 logits in one IG call, write a PNG."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x))
    train, test = perm[:1400], perm[1400:]
    model = digits_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for idx in train.split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(-1) == y[test]).float().mean().item()

    labels = y[test]
    pick = torch.stack([test[(labels == c).nonzero()[0, 0]] for c in range(10)])  # one test image per digit
    with torch.no_grad():
        pred = model(x[pick]).argmax(-1)
    td = TensorDict({"input": x[pick], "labels": y[pick]}, batch_size=[len(pick)])
    every_class = lambda o: TensorDict(
        {str(c): o["output"][:, c] for c in range(10)}, batch_size=o.batch_size
    )
    t0 = time.perf_counter()
    with IntegratedGradients(every_class, n_steps=32).prepare(model) as hooked:
        td = hooked(td)
    ig_s = time.perf_counter() - t0
    maps = torch.stack([td["attr", str(c), "input"][:, 0] for c in range(10)], 1)  # (10, 10, 8, 8)
    png = image_grid(
        x[pick, 0],
        maps,
        out / "digits_ig_all_classes.png",
        row_titles=[f"label {int(v)}, pred {int(p)}" for v, p in zip(y[pick], pred)],
        col_titles=[f"logit {c}" for c in range(10)],
        title=f"Integrated gradients (32 steps, zero baseline) of all 10 logits, digits CNN (test accuracy {acc:.1%})",
        colorbar_label="IG attribution",
    )
    deltas = torch.stack([td["attr_delta", str(c)] for c in range(10)]).abs().max().item()

    with ActivationCaching(["1", "3"]).prepare(model) as hooked:
        cached = hooked(td.select("input").clone())
    hooked = HookedModule(model)
    with hooked.run(td.select("input").clone()) as run:
        run.set("3", torch.zeros(1))  # knock out the second conv block's activations
    knocked = (run.output["output"].argmax(-1) == y[pick]).float().mean().item()
    return {
        "test_accuracy": round(acc, 4),
        "ig_all_10_classes_seconds": round(ig_s, 3),
        "ig_max_abs_convergence_delta": deltas,
        "cached_layers": [str(k) for k in cached["cache"].keys()],
        "accuracy_with_conv2_zeroed": knocked,
        "figure": str(png),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports")
    p.add_argument("--only", choices=["core", "pendulum", "chess", "pendulum_memory"])
    p.add_argument(
        "--train-frames", type=int, default=None, help="pendulum: frames of the short training run"
    )
    args = p.parse_args()
    torch.set_num_threads(1)  # small networks: one thread is several times faster on a busy 2-core machine
    out = Path(args.out)
    sections = [args.only] if args.only else ["core", "pendulum", "chess", "pendulum_memory"]
    summary = {}
    for name in sections:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        if name == "core":
            summary[name] = core_report(folder)
        else:
            try:
                module = importlib.import_module(f"agents.{name}.report")
            except ModuleNotFoundError:
                print(f"[{name}] no report module yet: skipped")
                continue
            summary[name] = module.main(folder, train_frames=args.train_frames)
        (folder / "summary.json").write_text(json.dumps(summary[name], indent=2, default=str))
        print(f"[{name}] report written to {folder.resolve()}")
    print(json.dumps(summary, indent=2, default=str))
    print(f"\nReports are in {out.resolve()}")


if __name__ == "__main__":
    main()
