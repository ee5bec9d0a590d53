"""Train the induction model on repeated random tokens and ship it: ``python -m agents.induction.train``.

Loss is next-token cross-entropy on the second copy of the repeated segment (the only predictable part). Writes
``agents/induction/checkpoint.pt`` (digest recorded in ``agents/checkpoints.sha256``) and the training curve
``agents/induction/figures/training.png``. About 3-5 CPU minutes on one thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from agents import checkpoints
from agents.induction.net import Config, InductionNet, repeated_tokens

ROOT = Path(__file__).parent
CHECKPOINT = ROOT / "checkpoint.pt"


def repeat_loss(model: InductionNet, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the predictions the repetition makes possible."""
    logits = model(ids)[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return (nll * mask).sum() / mask.sum()


def train(steps: int, batch: int, seed: int) -> tuple[InductionNet, list[tuple[int, float, float]]]:
    torch.manual_seed(seed)
    cfg = Config()
    model = InductionNet(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    held_ids, _, held_mask = repeated_tokens(512, cfg, torch.Generator().manual_seed(seed + 1))
    curve = []
    for step in range(steps + 1):
        ids, _, mask = repeated_tokens(batch, cfg, gen)
        loss = repeat_loss(model, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                test = repeat_loss(model.eval(), held_ids, held_mask).item()
            model.train()
            curve.append((step, loss.item(), test))
            print(f"step {step:5d}  train {loss.item():.3f}  held-out {test:.3f}", flush=True)
    return model.eval(), curve


def plot(curve: list[tuple[int, float, float]], path: Path, chance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, train_loss, test_loss = zip(*curve)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, train_loss, label="train batch")
    ax.plot(steps, test_loss, label="held-out (512 sequences)")
    ax.axhline(
        chance, ls="--", c="grey", label=f"uniform guess (ln {int(round(torch.tensor(chance).exp().item()))})"
    )
    ax.set(xlabel="step", ylabel="cross-entropy on the repeat (nats)", title="Induction model: training")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=150)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    model, curve = train(args.steps, args.batch, args.seed)
    torch.save({"config": model.config(), "state_dict": model.state_dict(), "curve": curve}, CHECKPOINT)
    checkpoints.record(CHECKPOINT)
    plot(curve, ROOT / "figures" / "training.png", float(torch.log(torch.tensor(Config().vocab - 1.0))))
    print(f"saved {CHECKPOINT} ({CHECKPOINT.stat().st_size / 1e6:.2f} MB) in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
