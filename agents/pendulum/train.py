"""Train the pendulum PPO agent: ``python -m agents.pendulum.train --frames 100000 --out PATH``.

``Collector`` (single process) -> GAE -> ``ClipPPOLoss`` with Adam, a cosine learning-rate schedule and
gradient clipping. After every ``eval_every`` batches the deterministic policy plays 10 seeded episodes;
the checkpoint with the best mean return is written to ``out`` (PPO on this env is not monotone).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE
from tqdm.auto import tqdm

from agents.pendulum.nets import CHECKPOINT, DEFAULT_CONFIG, make_actor, make_critic, save_agent
from envs.pendulum import MAX_STEPS, compute_obs_stats, make_env

BEST_STEP_REWARD = 9.36  # upright, centred, still: 10 - (1.2 - 2)^2
EVAL_SEEDS: tuple[int, ...] = tuple(range(10))

OnBatch = Callable[[TensorDictBase, int], Any]


@torch.no_grad()
def evaluate(
    policy: Callable[[TensorDictBase], TensorDictBase],
    env: EnvBase,
    seeds: Sequence[int] = EVAL_SEEDS,
    must_beat: float | None = None,
) -> list[float]:
    """Returns of deterministic episodes (one per seed, at most ``MAX_STEPS`` steps each).

    With ``must_beat``, stops early (returning the episodes played so far) once the mean over ``seeds`` can no
    longer exceed it even if every remaining episode were perfect.
    """
    returns: list[float] = []
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        for i, seed in enumerate(seeds):
            env.set_seed(seed)
            episode = env.rollout(MAX_STEPS, policy, break_when_any_done=True)
            returns.append(float(episode["next", "reward"].sum()))
            best_possible = sum(returns) + (len(seeds) - i - 1) * BEST_STEP_REWARD * MAX_STEPS
            if must_beat is not None and best_possible <= must_beat * len(seeds):
                break
    return returns


def train(
    frames: int = 100_000,
    out: str | Path | None = CHECKPOINT,
    *,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    frames_per_batch: int = 1000,
    epochs: int = 10,
    minibatch: int = 64,
    lr: float = 3e-4,
    eval_every: int = 1,
    stop_at: float | None = None,
    stats_steps: int = 2000,
    on_batch: OnBatch | None = None,
    actor: ProbabilisticActor | None = None,
    critic: ValueOperator | None = None,
    progress: bool = True,
    stages: tuple[str | Path, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Train a fresh actor-critic; returns ``{"actor", "critic", "obs_stats", "best": meta of the best eval}``.

    ``on_batch(batch, frames)`` is called once per collected batch, before the PPO update on it, with the
    batch as the collector returned it (batch size ``[frames_per_batch]``, policy outputs and ``"next"``
    entries, ``("physics", ...)`` labels, no GAE keys yet) and the number of frames collected so far.
    ``stop_at`` ends training once the best 10-episode mean return reaches it. ``out=None`` saves nothing.
    ``stages=(folder, [frames, ...])`` also saves the agent as it is after those many frames
    (``folder/stage_f{frames}.pt``, the same format), for analyses across training.
    The observation stats are measured once from ``stats_steps`` random-action steps and stored with the
    checkpoint.
    """
    torch.manual_seed(seed)
    config = {**DEFAULT_CONFIG, **(config or {})}
    obs_stats = compute_obs_stats(stats_steps, seed=seed)
    env = make_env(seed=seed, obs_stats=obs_stats)
    eval_env = make_env(obs_stats=obs_stats)
    actor = make_actor(config) if actor is None else actor  # pass your own to attach probes before training
    critic = make_critic(config) if critic is None else critic

    collector = Collector(
        env,
        actor,
        frames_per_batch=frames_per_batch,
        total_frames=frames,
        split_trajs=False,
        auto_register_policy_transforms=False,  # the MLP policy needs no InitTracker
    )
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=critic, average_gae=True, deactivate_vmap=True)
    loss_fn = ClipPPOLoss(
        actor,
        critic,
        clip_epsilon=0.2,
        entropy_bonus=True,
        entropy_coeff=1e-4,
        critic_coeff=1.0,
        loss_critic_type="smooth_l1",
    )
    optim = torch.optim.Adam(loss_fn.parameters(), lr=lr)
    n_batches = math.ceil(frames / frames_per_batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, n_batches, eta_min=0.0)
    buffer = ReplayBuffer(
        storage=LazyTensorStorage(frames_per_batch), sampler=SamplerWithoutReplacement(), batch_size=minibatch
    )

    best: dict[str, Any] = {"eval_mean_return": -math.inf}
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    done_frames = 0
    bar = tqdm(total=frames, disable=not progress, unit="frame")
    try:
        for i, batch in enumerate(collector):
            done_frames += batch.numel()
            if on_batch is not None:
                on_batch(batch, done_frames)
            for _ in range(epochs):
                with torch.no_grad():
                    gae(batch)
                buffer.extend(batch.reshape(-1))
                for _ in range(max(1, frames_per_batch // minibatch)):
                    losses = loss_fn(buffer.sample())
                    loss = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                    optim.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), 1.0)
                    optim.step()
            sched.step()
            collector.update_policy_weights_()
            if stages is not None and done_frames in stages[1]:
                Path(stages[0]).mkdir(parents=True, exist_ok=True)
                save_agent(
                    Path(stages[0]) / f"stage_f{done_frames}.pt",
                    actor,
                    critic,
                    obs_stats,
                    config,
                    {"frames": done_frames, "seed": seed},
                )

            postfix = {
                "r/step": f"{batch['next', 'reward'].mean().item():.2f}",
                "max_len": int(batch["next", "step_count"].max()),
            }
            if (i + 1) % eval_every == 0 or done_frames >= frames:
                actor.eval()
                rets = evaluate(actor, eval_env, must_beat=best["eval_mean_return"])
                actor.train()
                if len(rets) == len(EVAL_SEEDS) and sum(rets) / len(rets) > best["eval_mean_return"]:
                    best = {
                        "eval_mean_return": sum(rets) / len(rets),
                        "eval_returns": rets,
                        "eval_seeds": list(EVAL_SEEDS),
                        "frames": done_frames,
                        "wall_s": time.perf_counter() - t_wall,
                        "cpu_s": time.process_time() - t_cpu,
                        "seed": seed,
                    }
                    if out is not None:
                        save_agent(out, actor, critic, obs_stats, config, best)
                postfix["eval"] = f"{sum(rets) / len(rets):.0f}"
            postfix["best"] = f"{best['eval_mean_return']:.0f}"
            bar.set_postfix(postfix)
            bar.update(batch.numel())
            if stop_at is not None and best["eval_mean_return"] >= stop_at:
                break
    finally:
        bar.close()
        collector.shutdown()
        env.close()
        eval_env.close()
    best["total_frames"] = done_frames
    best["total_wall_s"] = time.perf_counter() - t_wall
    best["total_cpu_s"] = time.process_time() - t_cpu
    return {"actor": actor, "critic": critic, "obs_stats": obs_stats, "best": best}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=CHECKPOINT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cells", type=int, default=DEFAULT_CONFIG["num_cells"])
    p.add_argument("--depth", type=int, default=DEFAULT_CONFIG["depth"])
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N batches of 1000 frames")
    p.add_argument(
        "--stop-at", type=float, default=None, help="stop once the best 10-episode mean reaches this"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stages", type=Path, default=None, help="also save the agent at --stage-frames here")
    p.add_argument("--stage-frames", type=int, nargs="*", default=[2000, 10000, 20000, 30000])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = train(
        args.frames,
        args.out,
        seed=args.seed,
        config={"num_cells": args.num_cells, "depth": args.depth},
        lr=args.lr,
        eval_every=args.eval_every,
        stop_at=args.stop_at,
        stages=None if args.stages is None else (args.stages, args.stage_frames),
    )
    best = result["best"]
    print(
        f"best mean return {best['eval_mean_return']:.1f} over {len(EVAL_SEEDS)} seeds at "
        f"{best.get('frames')} frames; total {best['total_frames']} frames, "
        f"{best['total_cpu_s'] / 60:.1f} CPU min, {best['total_wall_s'] / 60:.1f} wall min; saved to {args.out}"
    )


if __name__ == "__main__":
    main()
