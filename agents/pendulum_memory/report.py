"""The memory-policy section of the demo report: ``python -m agents.pendulum_memory.report --out DIR``.

Loads the shipped LSTM and CatFrames checkpoints, collects stochastic episodes, probes the recurrent state for
the masked velocities and the return to go (with controls), draws the lag x feature attribution maps, and runs
the causal checks. Writes ``memory_probes.png``, ``lstm_saliency_lags.png``, ``lstm_ig_lags.png``, ``framestack_saliency_lags.png``
and returns the summary (``demo.py`` writes it as ``summary.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from agents.pendulum_memory.interpret import (
    FRAMESTACK_CHECKPOINT,
    LSTM_CHECKPOINT,
    causal_checks,
    collect,
    framestack_attribution,
    lstm_attribution,
    probe_memory,
)
from agents.pendulum_memory.nets import load_agent
from envs.pendulum_masked import MASKED_OBS_NAMES
from rlhook.plot.controls import probe_controls_figure
from rlhook.plot.lags import lag_feature_figure


def main(out: Path, train_frames: int | None = None, episodes: int = 6, steps: int = 600) -> dict[str, Any]:
    """Write the figures into ``out`` and return the summary (``train_frames`` is unused: nothing trains)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # the stochastic episodes sample from torch's global generator
    actor, _, state = load_agent(LSTM_CHECKPOINT)
    data = collect(actor, state, range(100, 100 + episodes), steps)
    summary: dict[str, Any] = {
        "checkpoint": {k: state["meta"].get(k) for k in ("frames", "eval_mean_return", "cpu_s")},
        "probe_rows": len(data),
        "probe": probe_memory(actor, state, data),
    }
    probe_controls_figure(
        summary["probe"]["rows"],
        out / "memory_probes.png",
        title="LSTM state vs controls: masked velocities and return to go (test R^2, split by episode)",
    )
    episode = collect(actor, state, [200], 300, kind="deterministic")
    att = lstm_attribution(actor, episode, ends=torch.arange(0, len(episode), 2))
    for name, res in att.items():
        lag_feature_figure(
            res["attr", "observation"],
            out / f"lstm_{name}_lags.png",
            valid=res["window", "valid"],
            feature_names=MASKED_OBS_NAMES,
            times=res["window", "end"],
            title=f"LSTM policy, velocities masked: {name} of log pi(a_t) over observations t-16..t",
        )
    summary["ig_completeness_max_gap"] = float(att["ig"]["attr_delta"].abs().max())
    fs_actor, _, fs_state = load_agent(FRAMESTACK_CHECKPOINT)
    fs_episode = collect(fs_actor, fs_state, [200], 300, kind="deterministic")
    fs = framestack_attribution(fs_actor, fs_episode, fs_state["config"]["frames"])
    lag_feature_figure(
        fs["attr"],
        out / "framestack_saliency_lags.png",
        valid=fs["valid"],
        feature_names=MASKED_OBS_NAMES,
        title="CatFrames MLP policy, velocities masked: saliency of loc over its stacked frames",
    )
    summary["causal"] = causal_checks(actor, state, data, seeds=range(300, 303), max_steps=steps)
    return summary


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("reports/pendulum_memory"))
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--steps", type=int, default=600)
    a = p.parse_args()
    torch.set_num_threads(1)
    result = main(a.out, episodes=a.episodes, steps=a.steps)
    (a.out / "summary.json").write_text(json.dumps(result, indent=1, default=float))
    print(
        json.dumps(
            {"selectivity": result["probe"]["selectivity"], "causal": result["causal"]["closed_loop"]},
            indent=1,
            default=float,
        )
    )
