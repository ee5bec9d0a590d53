"""Train a small Leela-style net on teacher-labelled positions: ``python -m agents.chess.train``.

Generates (or reads from ``--data-cache``) positions from random/teacher play (:mod:`agents.chess.positions`),
trains :class:`~agents.chess.net.LeelaNet` with cross-entropy on the teacher's move (illegal moves masked
out) and on the WDL class, and saves ``--snapshots`` intermediate checkpoints plus the final one. Every
checkpoint's meta holds the step, positions seen, CPU seconds and the held-out top-1 / WDL accuracy.
Deterministic for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from agents.chess.net import LeelaConfig, LeelaNet, save_checkpoint
from agents.chess.positions import LABELS, make_dataset, unpack_legal
from envs.chess.planes import HISTORY, PLANES_PER_STEP, unpack_planes

__all__ = ["HOLDOUT_SEED", "without_history", "evaluate", "load_or_make", "train", "main"]

HOLDOUT_SEED = 999  # training uses other seeds; positions of this seed are never trained on


def load_or_make(
    n: int, seed: int, cache: Path | None, workers: int, progress: bool, **options
) -> dict[str, np.ndarray]:
    """``make_dataset(n, seed, **options)``, stored in / read back from ``cache`` when given (a cache made
    by another labeller, or too short, is made again)."""
    labels = options.get("labels", "teacher")
    labeller = f"stockfish:{options.get('depth', 8)}" if labels == "stockfish" else labels
    if cache is not None and cache.exists():
        data = dict(np.load(cache))
        made_by = str(data.pop("labeller", "teacher"))
        if made_by == labeller and len(data["move"]) >= n:
            return {k: v[:n] for k, v in data.items()}
    data = make_dataset(n, seed, workers=workers, progress=progress, **options)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, labeller=np.array(labeller), **data)
    return data


def _batch(
    data: dict[str, np.ndarray],
    idx: np.ndarray,
    device: torch.device | str = "cpu",
    gen: np.random.Generator | None = None,
    history_dropout: float = 0.0,
) -> tuple[torch.Tensor, ...]:
    words = data["words"][idx]
    if history_dropout > 0:  # cut the history of some positions to k steps (k = 1: a bare FEN)
        cut = gen.random(len(idx)) < history_dropout
        keep = gen.integers(1, HISTORY, size=len(idx))
        step = np.arange(HISTORY * PLANES_PER_STEP) // PLANES_PER_STEP
        words[:, : HISTORY * PLANES_PER_STEP][cut[:, None] & (step[None, :] >= keep[:, None])] = 0
    planes = unpack_planes(words)
    legal = unpack_legal(data["legal"][idx])
    out = planes, legal, torch.from_numpy(data["move"][idx]), torch.from_numpy(data["wdl"][idx])
    return tuple(t.to(device) for t in out)


def without_history(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of ``data`` whose positions have no history planes, as if given by a bare FEN."""
    words = data["words"].copy()
    words[:, PLANES_PER_STEP : HISTORY * PLANES_PER_STEP] = 0
    return {**data, "words": words}


@torch.no_grad()
def evaluate(net: LeelaNet, data: dict[str, np.ndarray], batch: int = 1024) -> dict[str, float]:
    """Top-1 agreement with the teacher (argmax over legal moves) and WDL class accuracy, in eval mode."""
    was_training = net.training
    net.eval()
    top1 = wdl = 0
    n = len(data["move"])
    device = next(net.parameters()).device
    for start in range(0, n, batch):
        planes, legal, move, target = _batch(data, np.arange(start, min(n, start + batch)), device)
        out = net.heads(planes)
        top1 += (out["policy"].masked_fill(~legal, -torch.inf).argmax(1) == move).sum().item()
        wdl += (out["wdl"].argmax(1) == target).sum().item()
    net.train(was_training)
    return {"top1": top1 / n, "wdl_acc": wdl / n}


def train(
    net: LeelaNet,
    data: dict[str, np.ndarray],
    holdout: dict[str, np.ndarray],
    steps: int,
    out_dir: Path,
    batch: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    snapshots: int = 3,
    seed: int = 0,
    history_dropout: float = 0.25,
    progress: bool = True,
) -> list[dict]:
    """Train for ``steps`` (one-cycle learning rate); returns the metrics of each saved checkpoint.

    ``history_dropout``: fraction of training positions whose history is cut to a random 1..7 steps, so the
    net also handles positions given as a bare FEN (no history planes).
    """
    from tqdm.auto import tqdm

    gen = np.random.default_rng(seed)
    device = next(net.parameters()).device
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    save_at = {
        round(steps * (k + 1) / (snapshots + 1)): f"step{round(steps * (k + 1) / (snapshots + 1))}"
        for k in range(snapshots)
    }
    save_at[steps] = "final"
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(data["move"])
    order, cursor = gen.permutation(n), 0
    cpu0, history = time.process_time(), []
    net.train()
    bar = tqdm(range(1, steps + 1), desc="training", disable=not progress)
    for step in bar:
        if cursor + batch > n:
            order, cursor = gen.permutation(n), 0
        planes, legal, move, target = _batch(
            data, order[cursor : cursor + batch], device, gen, history_dropout
        )
        cursor += batch
        out = net.heads(planes)
        policy_loss = F.cross_entropy(out["policy"].masked_fill(~legal, -1e9), move)
        wdl_loss = F.cross_entropy(out["wdl"], target)
        loss = policy_loss + wdl_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(policy=f"{policy_loss.item():.3f}", wdl=f"{wdl_loss.item():.3f}")
        if step in save_at:
            metrics = evaluate(net, holdout)
            metrics.update({f"{k}_fen_only": v for k, v in evaluate(net, without_history(holdout)).items()})
            meta = {
                "step": step,
                "positions_seen": step * batch,
                "cpu_seconds": round(time.process_time() - cpu0, 1),
                "device": str(device),
                "train_positions": n,
                "holdout_positions": len(holdout["move"]),
                "holdout_seed": HOLDOUT_SEED,
                **{k: round(v, 4) for k, v in metrics.items()},
            }
            save_checkpoint(
                net, out_dir / f"leela_{net.config.blocks}x{net.config.filters}_{save_at[step]}.pt", **meta
            )
            net.to(device)
            history.append(meta)
            bar.write(json.dumps(meta))
    net.eval()
    return history


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--positions", type=int, default=150_000, help="training positions")
    p.add_argument("--holdout", type=int, default=4000, help="held-out positions (seed 999)")
    p.add_argument("--steps", type=int, default=1800)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--se-ratio", type=int, default=4)
    p.add_argument(
        "--history-dropout", type=float, default=0.25, help="positions trained without full history"
    )
    p.add_argument("--snapshots", type=int, default=3, help="intermediate checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    p.add_argument("--workers", type=int, default=1, help="processes generating positions")
    p.add_argument(
        "--labels",
        choices=LABELS,
        default="teacher",
        help="targets: the code teacher or Stockfish (if installed)",
    )
    p.add_argument("--depth", type=int, default=8, help="Stockfish search depth (with --labels stockfish)")
    p.add_argument("--data-cache", type=Path, default=None, help="npz file to reuse generated positions")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "checkpoints")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    progress = not args.no_progress
    t0, cpu_start = time.time(), sum(os.times()[:4])
    labels = {"labels": args.labels, "depth": args.depth}
    data = load_or_make(args.positions, args.seed, args.data_cache, args.workers, progress, **labels)
    holdout_cache = args.data_cache.with_suffix(".holdout.npz") if args.data_cache else None
    holdout = load_or_make(args.holdout, HOLDOUT_SEED, holdout_cache, args.workers, progress, **labels)
    print(f"data: {len(data['move'])} + {len(holdout['move'])} positions in {time.time() - t0:.0f} s wall")
    net = LeelaNet(LeelaConfig(blocks=args.blocks, filters=args.filters, se_ratio=args.se_ratio)).to(
        args.device
    )
    history = train(
        net,
        data,
        holdout,
        args.steps,
        args.out,
        args.batch,
        args.lr,
        snapshots=args.snapshots,
        seed=args.seed,
        history_dropout=args.history_dropout,
        progress=progress,
    )
    cpu = sum(os.times()[:4])  # this process and its finished workers
    print(f"total: {time.time() - t0:.0f} s wall, {cpu - cpu_start:.0f} s CPU")
    return history


if __name__ == "__main__":
    main()
