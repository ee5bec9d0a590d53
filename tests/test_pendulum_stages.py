"""The shipped agent's training stages load (digest-checked), end at the shipped checkpoint, and the probes
across them come with their controls."""

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")
pytest.importorskip("matplotlib")

from agents.pendulum.nets import CHECKPOINT, read_checkpoint  # noqa: E402
from agents.pendulum.stages import probes_across_stages, stage_paths  # noqa: E402


def test_stages_are_one_run_ending_at_the_shipped_checkpoint():
    stages = stage_paths()
    assert len(stages) >= 3 and stages[-1][1] == CHECKPOINT
    frames = [f for f, _ in stages]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    states = [read_checkpoint(p) for _, p in stages]  # digest-checked loads
    for state in states:
        torch.testing.assert_close(state["obs_stats"], states[-1]["obs_stats"], rtol=0, atol=0)
    first, last = states[0]["actor"], states[-1]["actor"]
    assert any(not torch.equal(first[k], last[k]) for k in first)  # the weights moved between stages


def test_probes_across_stages_have_their_controls(tmp_path):
    p = probes_across_stages(tmp_path, seeds=range(1), max_steps=120)
    assert (tmp_path / "probes_across_stages.png").stat().st_size > 10_000
    assert len(p["table"]) == 4 * len(p["stages"])
    for r in p["table"]:
        assert r["shuffled"] <= r["trained"] + 0.02  # labels permuted: never above the real probe
        assert r["selectivity"] == pytest.approx(r["trained"] - max(r["random_init"], r["raw_obs"]))
    q1 = [r for r in p["table"] if r["quantity"] == "q1"]
    assert all(r["raw_obs"] > 0.9 for r in q1)  # the pole angle is (near-)linear in the observation
