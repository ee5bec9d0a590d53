"""Probes across the training stages of the shipped pendulum agent, each next to its controls.

The stages are checkpoints of the shipped agent's own run (``agents/pendulum/stages/stage_f*.pt``, saved by
``python -m agents.pendulum.train ... --stages agents/pendulum/stages``; the run's final state is the shipped
``checkpoint.pt``). One pool of states serves every stage: deterministic episodes of every stage's agent (early
agents fall within tens of steps, the final one balances), so that quantities such as the time to the fall
vary. On that pool each stage's actor is probed (closed-form ridge, test R^2 on whole held-out episodes) for
each quantity, next to: a random-init actor of the same architecture, the raw observation, and shuffled labels.
Selectivity is the stage's score minus the best of the random-init and raw-observation scores.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase

from agents.pendulum.nets import CHECKPOINT, load_agent, make_actor, read_checkpoint
from envs.pendulum import MAX_STEPS, make_env
from rlhook.latent import ActivationCaching, probe_with_controls
from rlhook.plot import pyplot, save_figure

STAGES = Path(__file__).parent / "stages"
LAYERS = ["module.0.module.act0", "module.0.module.act1"]


def stage_paths() -> list[tuple[int, Path]]:
    """``[(frames, path)]`` of the shipped stages, the final checkpoint last."""
    found = [(int(re.search(r"f(\d+)", p.stem).group(1)), p) for p in STAGES.glob("stage_f*.pt")]
    final = int(read_checkpoint(CHECKPOINT)["meta"]["frames"])
    return sorted(found) + [(final, CHECKPOINT)]


def _episodes(actors, obs_stats, seeds, max_steps: int) -> TensorDictBase:
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from agents.pendulum.report import labels

    pool = []
    for i, actor in enumerate(actors):
        for seed in seeds:
            env = make_env(seed=1000 * i + seed, obs_stats=obs_stats)
            with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
                ep = env.rollout(max_steps, actor, break_when_any_done=True)
            ep["episode"] = torch.full(ep.batch_size, len(pool))
            ep["labels"] = torch.stack(list(labels(ep).values()), -1)
            pool.append(ep.exclude("next").select("observation", "episode", "labels"))
            env.close()
    return torch.cat(pool)


def _acts(actor, states: TensorDictBase) -> dict[str, torch.Tensor]:
    with ActivationCaching(LAYERS).prepare(actor) as hooked, torch.no_grad():
        out = hooked(states.select("observation").clone())
    return {name: out["cache", name] for name in LAYERS}


def probes_across_stages(out: Path, seeds=range(3), max_steps: int = 300) -> dict[str, Any]:
    """Probe every stage on one pool of states; writes ``probes_across_stages.png``; returns the table."""
    from agents.pendulum.report import QUANTITIES

    stages = stage_paths()
    agents = [load_agent(p) for _, p in stages]
    obs_stats = agents[-1][2]  # one normalisation for the pool: the stages share the run's stats
    if not all(torch.equal(a[2]["loc"], obs_stats["loc"]) for a in agents):
        raise ValueError("the stages were not saved by one run: their observation statistics differ")
    pool = _episodes([a[0] for a in agents], obs_stats, seeds, max_steps)
    episodes = pool["episode"].unique()
    test_eps = episodes[torch.randperm(len(episodes), generator=torch.Generator().manual_seed(0))][
        : len(episodes) // 4
    ]
    test = torch.isin(pool["episode"], test_eps)
    train, test = (~test).nonzero().squeeze(-1), test.nonzero().squeeze(-1)
    labels = {q: pool["labels"][:, i] for i, q in enumerate(QUANTITIES)}
    torch.manual_seed(1)
    features = {"random_init": _acts(make_actor(read_checkpoint(CHECKPOINT)["config"]), pool)}
    features["raw_obs"] = {"observation": pool["observation"]}
    for (frames, _), (actor, _, _) in zip(stages, agents):
        features[f"f{frames}"] = _acts(actor, pool)
    rows = probe_with_controls(features, labels, train=train, test=test, alpha=1.0)
    score = {(r["features"], r["layer"], r["quantity"]): r for r in rows}
    table = []
    for frames, _ in stages:
        for q in QUANTITIES:
            best = max(score[(f"f{frames}", layer, q)]["score"] for layer in LAYERS)
            controls = max(
                max(score[("random_init", layer, q)]["score"] for layer in LAYERS),
                score[("raw_obs", "observation", q)]["score"],
            )
            shuffled = max(score[(f"f{frames}", layer, q)]["shuffled"] for layer in LAYERS)
            table.append(
                {
                    "frames": frames,
                    "quantity": q,
                    "trained": best,
                    "random_init": max(score[("random_init", layer, q)]["score"] for layer in LAYERS),
                    "raw_obs": score[("raw_obs", "observation", q)]["score"],
                    "shuffled": shuffled,
                    "selectivity": best - controls,
                }
            )
    plt = pyplot()
    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(3.2 * len(QUANTITIES), 3.2), sharey=True)
    xs = [frames for frames, _ in stages]
    for ax, q in zip(axes, QUANTITIES):
        mine = [r for r in table if r["quantity"] == q]
        ax.plot(xs, [r["trained"] for r in mine], "o-", label="agent at that stage")
        ax.axhline(mine[0]["random_init"], color="grey", ls="--", label="random-init actor")
        ax.axhline(mine[0]["raw_obs"], color="black", ls=":", label="raw observation")
        ax.plot(xs, [r["shuffled"] for r in mine], "x", color="red", label="shuffled labels")
        ax.set_title(q)
        ax.set_xlabel("training frames")
    axes[0].set_ylabel("probe test R² (best hidden layer)")
    axes[0].legend(fontsize=7)
    fig.suptitle("What the shipped agent's hidden layers encode, stage by stage")
    fig.tight_layout()
    save_figure(fig, out / "probes_across_stages.png")
    return {
        "stages": xs,
        "rows": len(pool),
        "episodes": len(episodes),
        "max_steps": max_steps,
        "table": table,
        "figure": str(out / "probes_across_stages.png"),
        "steps_per_episode": MAX_STEPS,
    }
