"""Train a memory policy on the masked-velocity pendulum.

``python -m agents.pendulum_memory.train --arch lstm --frames 300000 --out DIR``

``Collector`` (single env, 1,000 frames per batch) -> GAE with the asymmetric critic -> ``ClipPPOLoss``. The
batch is cut into segments of ``seq_len`` consecutive steps; each segment starts from the recurrent state that
was stored during collection and the LSTM runs in recurrent mode over it (``set_recurrent_mode``), resetting at
``is_init``. A framestack policy uses ``seq_len=1``. Every ``eval_every`` batches the deterministic policy plays
seeds 0-9; the best mean is written to ``DIR/<arch>_best.pt`` and every evaluation to ``DIR/<arch>_f<frames>.pt``
when ``--snapshots`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchrl.collectors import Collector
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from agents.pendulum.train import EVAL_SEEDS, evaluate
from agents.pendulum_memory.nets import (
    DEFAULT_CONFIG,
    env_kwargs,
    load_agent,
    make_actor,
    make_critic,
    save_agent,
)
from envs.pendulum import compute_obs_stats
from envs.pendulum_masked import make_masked_env


def segments(batch, seq_len: int):
    """``[T]`` collector batch -> ``[T // seq_len, seq_len]`` consecutive segments (the tail is dropped)."""
    n = batch.shape[-1] // seq_len
    return batch[..., : n * seq_len].reshape(-1, seq_len)


def train(
    frames: int,
    out_dir: str | Path | None,
    *,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    frames_per_batch: int = 1000,
    epochs: int = 8,
    seq_len: int = 20,
    minibatch_frames: int = 100,
    lr: float = 3e-4,
    eval_every: int = 5,
    stop_at: float | None = None,
    snapshots: bool = False,
    init: str | Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Train a policy; returns ``{"actor", "critic", "obs_stats", "best", "curve"}``.

    ``init``: continue from a checkpoint of this format (its weights, config and observation stats; a fresh
    optimizer and schedule over ``frames`` more frames; frame counts continue from the checkpoint's).
    """
    torch.manual_seed(seed)
    config = {**DEFAULT_CONFIG, **(config or {})}
    start_frames, start_cpu = 0, 0.0
    if init is not None:
        actor, critic, state = load_agent(init)
        actor.train(), critic.train()
        config, obs_stats = state["config"], state["obs_stats"]
        start_frames, start_cpu = int(state["meta"]["frames"]), float(state["meta"]["cpu_s"])
    if config["arch"] == "framestack":
        seq_len, minibatch_frames = 1, 64
    if init is None:
        actor, critic = make_actor(config), make_critic(config)
        obs_stats = compute_obs_stats(2000, seed=seed)
    kw = env_kwargs(config, actor)
    env = make_masked_env(seed=seed, obs_stats=obs_stats, **kw)
    eval_env = make_masked_env(
        obs_stats=obs_stats, **{**env_kwargs(config, actor), "noise_std": kw["noise_std"]}
    )
    collector = Collector(
        env,
        actor,
        frames_per_batch=frames_per_batch,
        total_frames=frames,
        auto_register_policy_transforms=False,
    )
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=critic, average_gae=True, deactivate_vmap=True)
    loss_fn = ClipPPOLoss(
        actor, critic, clip_epsilon=0.2, entropy_bonus=True, entropy_coeff=1e-4, loss_critic_type="smooth_l1"
    )
    optim = torch.optim.Adam(loss_fn.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, math.ceil(frames / frames_per_batch))
    frames_goal = start_frames + frames
    out_dir = None if out_dir is None else Path(out_dir)
    arch = config["arch"]
    best: dict[str, Any] = {"eval_mean_return": -math.inf}
    curve: list[dict[str, float]] = []
    t_wall, t_cpu, done_frames = time.perf_counter(), time.process_time() - start_cpu, start_frames
    per_mb = max(1, minibatch_frames // seq_len)
    try:
        for i, batch in enumerate(collector):
            done_frames += batch.numel()
            with torch.no_grad():
                gae(batch)
            segs = segments(batch, seq_len)
            for _ in range(epochs):
                perm = torch.randperm(segs.shape[0])
                for j in range(0, segs.shape[0], per_mb):
                    mb = segs[perm[j : j + per_mb]]
                    if seq_len == 1:
                        mb = mb.reshape(-1)
                    with set_recurrent_mode(True):
                        losses = loss_fn(mb)
                    loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                    optim.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), 1.0)
                    optim.step()
            sched.step()
            collector.update_policy_weights_()
            msg = f"frames {done_frames} r/step {batch['next', 'reward'].mean().item():.2f}"
            if (i + 1) % eval_every == 0 or done_frames >= frames_goal:
                actor.eval()
                rets = evaluate(actor, eval_env)
                actor.train()
                mean = sum(rets) / len(rets)
                meta = {
                    "eval_mean_return": mean,
                    "eval_returns": rets,
                    "eval_seeds": list(EVAL_SEEDS),
                    "frames": done_frames,
                    "wall_s": time.perf_counter() - t_wall,
                    "cpu_s": time.process_time() - t_cpu,
                    "seed": seed,
                    "init": None if init is None else Path(init).name,
                }
                curve.append({k: meta[k] for k in ("frames", "eval_mean_return", "cpu_s", "wall_s")})
                if out_dir is not None and snapshots:
                    save_agent(out_dir / f"{arch}_f{done_frames}.pt", actor, critic, obs_stats, config, meta)
                if mean > best["eval_mean_return"]:
                    best = meta
                    if out_dir is not None:
                        save_agent(out_dir / f"{arch}_best.pt", actor, critic, obs_stats, config, meta)
                msg += f" eval {mean:.0f} (min {min(rets):.0f}) best {best['eval_mean_return']:.0f}"
                msg += f" cpu {meta['cpu_s'] / 60:.1f}min"
                if out_dir is not None:
                    (out_dir / f"{arch}_curve.json").write_text(json.dumps(curve, indent=1))
            log(msg)
            if stop_at is not None and best["eval_mean_return"] >= stop_at:
                break
    finally:
        collector.shutdown()
        env.close()
        eval_env.close()
    best.update(
        total_frames=done_frames, total_cpu_s=time.process_time() - t_cpu, init=str(init) if init else None
    )
    return {"actor": actor, "critic": critic, "obs_stats": obs_stats, "best": best, "curve": curve}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["lstm", "framestack"], default="lstm")
    p.add_argument("--frames", type=int, default=300_000)
    p.add_argument("--out", type=Path, required=True, help="output folder for checkpoints and the curve")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=DEFAULT_CONFIG["hidden"])
    p.add_argument("--stack", type=int, default=DEFAULT_CONFIG["frames"], help="CatFrames N (framestack)")
    p.add_argument("--noise-std", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--stop-at", type=float, default=None)
    p.add_argument("--snapshots", action="store_true", help="also keep a checkpoint per evaluation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init", type=Path, default=None, help="continue from this checkpoint's weights")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = {"arch": args.arch, "hidden": args.hidden, "frames": args.stack, "noise_std": args.noise_std}
    result = train(
        args.frames,
        args.out,
        config=config,
        seed=args.seed,
        lr=args.lr,
        eval_every=args.eval_every,
        stop_at=args.stop_at,
        snapshots=args.snapshots,
        init=args.init,
        log=lambda m: print(m, flush=True),
    )
    best = result["best"]
    print(
        f"best mean return {best['eval_mean_return']:.1f} at {best.get('frames')} frames; total "
        f"{best['total_frames']} frames, {best['total_cpu_s'] / 60:.1f} CPU min"
    )


if __name__ == "__main__":
    main()
