"""Memory feature sets (replayed states, lagged observations, selectivity) and recurrent state edits."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchrl")

sys.path.insert(0, str(Path(__file__).parent))
from test_unrolled import F, H, T, make_policy, make_rollout  # noqa: E402

from rlhook import hook_count  # noqa: E402
from rlhook.rl.memory import lagged_observations, replay_states, selectivity  # noqa: E402
from rlhook.rl.state_edit import ReplaceState, ShiftAlong, StateEdit  # noqa: E402


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_replay_states_equal_the_stepped_policy(kind):
    policy = make_policy(kind)
    rollout = make_rollout(policy, kind)
    states = replay_states(policy, rollout)
    assert states["memory"].shape == (T, H)
    keys = ["rs_h", "rs_c"] if kind == "lstm" else ["rs"]
    assert sorted(states) == sorted(["memory", *keys])
    # reference: the LSTM run in recurrent mode on each episode from zeros gives the same outputs
    from torchrl.modules import set_recurrent_mode

    with torch.no_grad(), set_recurrent_mode(True):
        td = rollout.select("observation", "is_init").clone()
        for k in keys:
            td.set(k, torch.zeros(T, 1, H))
        policy.module[0].module[0](td)
    torch.testing.assert_close(states["memory"], td["memory"])
    torch.testing.assert_close(
        states[keys[0]][-1], td["next", keys[0]][-1]
    )  # final state of the last episode
    batched = replay_states(policy, torch.stack([rollout, rollout]))
    torch.testing.assert_close(batched["memory"][1], states["memory"])


def test_lagged_observations_stop_at_episode_start():
    policy = make_policy()
    rollout = make_rollout(policy)
    lagged = lagged_observations(rollout, 2)
    obs = rollout["observation"]
    assert lagged.shape == (T, 3 * F)
    torch.testing.assert_close(lagged[10], torch.cat([obs[8], obs[9], obs[10]]))
    torch.testing.assert_close(lagged[8], torch.cat([torch.zeros(F), obs[7], obs[8]]))  # is_init at 7
    torch.testing.assert_close(lagged_observations(rollout, 0), obs)
    with pytest.raises(ValueError, match="k must be"):
        lagged_observations(rollout, -1)


def test_selectivity_is_trained_minus_best_control():
    rows = [
        {"features": "trained", "layer": "h", "quantity": "w1", "score": 0.9, "shuffled": -0.01},
        {"features": "trained", "layer": "c", "quantity": "w1", "score": 0.8, "shuffled": 0.0},
        {"features": "random_init", "layer": "h", "quantity": "w1", "score": 0.5, "shuffled": 0.0},
        {"features": "last_obs", "layer": "obs", "quantity": "w1", "score": 0.6, "shuffled": 0.0},
    ]
    s = selectivity(rows)["w1"]
    assert s["selectivity"] == pytest.approx(0.3) and s["control_name"] == "last_obs/obs"
    assert selectivity(rows, controls=["random_init"])["w1"]["selectivity"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="control"):
        selectivity(rows[:2])


def step_td(rollout, t, state):
    td = rollout[t].select("observation", "is_init").update(state)
    td.set("step_count", torch.tensor([t]))
    return td.unsqueeze(0)


def test_shift_along_moves_the_probe_readout_by_delta():
    policy = make_policy()
    rollout = make_rollout(policy)
    state = {"rs_h": torch.randn(1, H), "rs_c": torch.randn(1, H)}
    d = torch.randn(2 * H)
    with torch.no_grad():
        base = policy(step_td(rollout, 3, state).clone())
        with StateEdit(ShiftAlong(d, 0.7)).prepare(policy) as hooked:
            edited = hooked(step_td(rollout, 3, state).clone())
        with StateEdit(ShiftAlong(d, 0.7, steps=[5])).prepare(policy) as hooked:
            skipped = hooked(step_td(rollout, 3, state).clone())
    x0 = torch.cat([base["next", "rs_h"], base["next", "rs_c"]], -1).reshape(-1)
    x1 = torch.cat([edited["next", "rs_h"], edited["next", "rs_c"]], -1).reshape(-1)
    assert float(d @ (x1 - x0)) == pytest.approx(0.7, abs=1e-5)
    torch.testing.assert_close(edited["memory"], edited["next", "rs_h"][:, -1])
    assert not torch.equal(edited["loc"], base["loc"])  # the action of this very step changes
    torch.testing.assert_close(skipped["loc"], base["loc"])
    assert hook_count(policy) == 0


def test_replace_state_patches_the_donor_state_and_cleans_up_after_errors():
    policy = make_policy()
    rollout = make_rollout(policy)
    donor = {"h": torch.randn(T, 1, H), "c": torch.randn(T, 1, H)}
    state = {"rs_h": torch.zeros(1, H), "rs_c": torch.zeros(1, H)}
    with torch.no_grad(), StateEdit(ReplaceState(donor, steps=[4])).prepare(policy) as hooked:
        out = hooked(step_td(rollout, 4, state))
    torch.testing.assert_close(out["next", "rs_h"][0], donor["h"][4])
    torch.testing.assert_close(out["memory"][0], donor["h"][4, -1])
    bad = StateEdit(ShiftAlong(torch.ones(3), 1.0))
    with pytest.raises(ValueError, match="H=5"), bad.prepare(policy) as hooked:
        hooked(step_td(rollout, 4, state))
    assert hook_count(policy) == 0
    with (
        pytest.raises(KeyError, match="StepCounter"),
        StateEdit(ReplaceState(donor, [1])).prepare(policy) as h,
    ):
        h(step_td(rollout, 4, state).exclude("step_count"))
    with pytest.raises(TypeError, match="callable"):
        StateEdit(3)


def test_shift_along_the_head_weights_moves_the_action_mean_by_delta():
    """Closed-form direction check: loc = w . memory + b, so moving h by delta w / |w|^2 adds delta to loc."""
    policy = make_policy()
    rollout = make_rollout(policy)
    w = policy.module[0].module[1].module[0].weight[0].detach()
    state = {"rs_h": torch.randn(1, H), "rs_c": torch.randn(1, H)}
    with torch.no_grad():
        base = policy(step_td(rollout, 2, state).clone())["loc"]
        for delta in (-0.5, 0.25, 1.0):
            with StateEdit(ShiftAlong(w, delta)).prepare(policy) as hooked:
                loc = hooked(step_td(rollout, 2, state).clone())["loc"]
            assert float(loc - base) == pytest.approx(delta, abs=1e-5)
