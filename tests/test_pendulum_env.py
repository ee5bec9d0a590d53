"""Pendulum env builder, physics/return helpers, PPO nets and the shipped checkpoint (real MuJoCo envs)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")

from torchrl.envs import ExplorationType, set_exploration_type  # noqa: E402

from agents.pendulum import nets  # noqa: E402
from envs import pendulum as P  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


STATS = {"loc": torch.linspace(-0.5, 0.5, 9), "scale": torch.linspace(0.5, 2.0, 9)}


def _const_policy(value: float):
    def policy(td):
        return td.set("action", torch.full(td.batch_size + (1,), value))

    return policy


def test_specs_and_dtypes():
    env = P.make_env(seed=0, obs_stats=STATS)
    spec = env.observation_spec
    assert spec["observation"].dtype == torch.float32 and spec["observation"].shape == (9,)
    assert torch.equal(env.action_spec.space.low, torch.tensor([-1.0]))
    assert torch.equal(env.action_spec.space.high, torch.tensor([1.0]))
    assert len(P.OBS_NAMES) == 9
    td = env.rollout(5, _const_policy(0.0))
    assert td.batch_size == (5,)
    assert td["observation"].dtype == torch.float32
    assert td["next", "step_count"].squeeze(-1).tolist() == [1, 2, 3, 4, 5]
    for name in P.PHYSICS_NAMES:
        assert td["next", "physics", name].shape == (5,)
    env.close()


def test_seeding_is_reproducible_and_seed_dependent():
    def obs(seed):
        env = P.make_env(seed=seed)
        out = env.rollout(30, _const_policy(0.2), break_when_any_done=False)["next", "observation"]
        env.close()
        return out

    a, b, c = obs(3), obs(3), obs(4)
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], c[0])


def test_observation_norm_uses_given_stats():
    raw_env, norm_env = P.make_env(seed=1), P.make_env(seed=1, obs_stats=STATS)
    raw = raw_env.rollout(20, _const_policy(-0.3))["observation"]
    norm = norm_env.rollout(20, _const_policy(-0.3))["observation"]
    torch.testing.assert_close(norm, (raw - STATS["loc"]) / STATS["scale"])
    torch.testing.assert_close(P.unnormalize(norm, STATS), raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(P.obs_stats_of(norm_env)["scale"], STATS["scale"])


def test_physics_agrees_with_mujoco_and_reward():
    env = P.make_env(seed=2, obs_stats=STATS)
    data = env.base_env._env.unwrapped.data
    td = env.reset()
    torch.manual_seed(0)
    steps = 0
    while True:
        td["action"] = torch.rand(1) * 2 - 1
        td = env.step(td)
        nxt = td["next"]
        tip_x, _, tip_y = (float(v) for v in data.site_xpos[0])  # the tip site, straight from MuJoCo
        assert nxt["physics", "tip_y"].item() == pytest.approx(tip_y, abs=1e-6)
        assert nxt["physics", "q1"].item() == pytest.approx(float(data.qpos[1]), abs=1e-6)
        # from the observation's sin/cos layout alone
        phys = P.physical_state(nxt["observation"], STATS)
        assert phys["tip_y"].item() == pytest.approx(tip_y, abs=1e-4)
        assert phys["tip_x"].item() == pytest.approx(tip_x, abs=1e-4)
        assert phys["q2"].item() == pytest.approx(float(data.qpos[2]), abs=1e-4)
        # gymnasium's reward and termination rules, recomputed from the tip position
        dist = 0.01 * tip_x**2 + (tip_y - 2) ** 2
        assert nxt["reward_terms", "distance_penalty"].item() == pytest.approx(-dist, abs=1e-4)
        terms = sum(nxt["reward_terms", k] for k in P.REWARD_TERMS)
        torch.testing.assert_close(terms, nxt["reward"], atol=1e-4, rtol=0)
        assert bool(nxt["terminated"]) == (tip_y <= P.HEALTHY_TIP_Y)
        steps += 1
        if nxt["done"].item():
            break
        td = td["next"]
    assert 1 < steps < P.MAX_STEPS  # random actions topple the pendulum
    env.close()


def _handmade_trajectory() -> TensorDict:
    reward = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).unsqueeze(-1)
    terminated = torch.tensor([0, 0, 1, 0, 0, 0, 0], dtype=torch.bool).unsqueeze(-1)
    truncated = torch.tensor([0, 0, 0, 0, 1, 0, 0], dtype=torch.bool).unsqueeze(-1)
    nxt = {"reward": reward, "terminated": terminated, "truncated": truncated, "done": terminated | truncated}
    return TensorDict({"next": nxt}, batch_size=[7])


def test_return_to_go_and_time_to_termination_on_handmade_trajectory():
    td = _handmade_trajectory()
    assert P.return_to_go(td).squeeze(-1).tolist() == [6.0, 5.0, 3.0, 9.0, 5.0, 13.0, 7.0]
    assert P.return_to_go(td, gamma=0.5).squeeze(-1).tolist() == [2.75, 3.5, 3.0, 6.5, 5.0, 9.5, 7.0]
    ttt = P.time_to_termination(td).squeeze(-1).tolist()
    assert ttt[:3] == [3.0, 2.0, 1.0] and all(math.isinf(v) for v in ttt[3:])
    assert P.time_to_termination(td, not_terminated=-1.0).squeeze(-1).tolist()[3:] == [-1.0] * 4
    # a batch of trajectories [2, T]: time is the last batch dim, rows are independent
    pair = torch.stack([td, td.flip(0)], 0)
    rtg = P.return_to_go(pair)
    assert rtg.shape == (2, 7, 1)
    torch.testing.assert_close(rtg[0], P.return_to_go(td))
    torch.testing.assert_close(rtg[1], P.return_to_go(td.flip(0)))


def test_return_to_go_on_a_real_rollout():
    env = P.make_env(seed=5)
    td = env.rollout(200, _const_policy(0.5), break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    first_end = int(done.nonzero()[0])
    rtg = P.return_to_go(td)
    assert rtg[0].item() == pytest.approx(td["next", "reward"][: first_end + 1].sum().item(), rel=1e-5)
    assert P.time_to_termination(td)[0].item() == first_end + 1
    env.close()


def test_parallel_env_batches_workers():
    env = P.make_env(seed=0, parallel=2, obs_stats=STATS)
    try:
        td = env.rollout(10, _const_policy(0.0), break_when_any_done=False)
        assert td.batch_size == (2, 10)
        assert td["observation"].dtype == torch.float32
        assert td["next", "physics", "tip_y"].shape == (2, 10)
        assert not torch.allclose(td["observation"][0, 0], td["observation"][1, 0])  # seeds 0 and 1
    finally:
        env.close()


def test_actor_and_critic_keys_and_paths():
    actor, critic = nets.make_actor(), nets.make_critic()
    td = TensorDict({"observation": torch.randn(4, 9)}, batch_size=[4])
    out = critic(actor(td))
    assert out["loc"].shape == out["scale"].shape == out["action"].shape == (4, 1)
    assert out["state_value"].shape == (4, 1)
    assert (out["action"].abs() <= 1).all() and (out["scale"] > 0).all()
    assert "module.0.module.act1" in dict(actor.named_modules())
    assert "module.act1" in dict(critic.named_modules())


def test_shared_trunk_variant_outputs():
    torch.manual_seed(0)
    module = nets.make_shared_actor_critic({"num_cells": 32, "depth": 2})
    obs = torch.randn(5, 9)
    out = module(TensorDict({"observation": obs}, batch_size=[5]))
    assert set(module.out_keys) == {"loc", "scale", "state_value"}
    assert out["loc"].shape == out["scale"].shape == (5, 1) and out["state_value"].shape == (5, 1)
    # independent recomputation of the heads from the named submodules
    m = module.module
    hidden = torch.tanh(m.trunk.fc1(torch.tanh(m.trunk.fc0(obs))))
    value = (hidden @ m.value_head.weight.T + m.value_head.bias) * nets.DEFAULT_CONFIG["value_scale"]
    torch.testing.assert_close(out["state_value"], value)
    torch.testing.assert_close(out["loc"], (hidden @ m.policy_head.weight.T + m.policy_head.bias)[:, :1])
    assert (out["scale"] > 0).all()
    sampled = nets.policy_from(module)(TensorDict({"observation": obs}, batch_size=[5]))
    assert sampled["action"].shape == (5, 1) and "state_value" in sampled.keys()


def test_shipped_checkpoint_loads_and_balances():
    assert nets.CHECKPOINT.stat().st_size < 1_000_000
    raw = torch.load(nets.CHECKPOINT, weights_only=True)
    assert raw["meta"]["eval_mean_return"] >= 8500
    actor, critic, stats = nets.load_agent()
    env = P.make_env(obs_stats=stats)
    returns = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        for seed in (0, 1):
            env.set_seed(seed)
            episode = env.rollout(P.MAX_STEPS, actor, break_when_any_done=True)
            returns.append(episode["next", "reward"].sum().item())
        assert critic(episode[:1])["state_value"].shape == (1, 1)
    env.close()
    assert sum(returns) / len(returns) >= 8500, returns


def test_train_calls_on_batch_and_saves(tmp_path):
    from agents.pendulum.train import train

    seen = []
    path = tmp_path / "ck.pt"
    result = train(
        400,
        path,
        frames_per_batch=200,
        stats_steps=200,
        epochs=1,
        minibatch=100,
        config={"num_cells": 16, "depth": 1},
        on_batch=lambda batch, frames: seen.append(
            (batch.batch_size, frames, ("next", "reward") in batch.keys(True))
        ),
        progress=False,
    )
    assert seen == [((200,), 200, True), ((200,), 400, True)]
    assert result["best"]["total_frames"] == 400
    actor, _, stats = nets.load_agent(path)
    torch.testing.assert_close(stats["loc"], result["obs_stats"]["loc"])
