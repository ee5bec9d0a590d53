"""The masked-velocity pendulum, its shipped memory agents, and the training script."""

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")

from agents import checkpoints  # noqa: E402
from agents.pendulum.train import evaluate  # noqa: E402
from agents.pendulum_memory.interpret import FRAMESTACK_CHECKPOINT, LSTM_CHECKPOINT, episode_split  # noqa: E402
from agents.pendulum_memory.nets import ROOT, env_kwargs, load_agent  # noqa: E402
from envs.pendulum_masked import MASKED_INDEX, STACK_KEY, make_masked_env  # noqa: E402

SHIPPED = sorted(ROOT.glob("*.pt"))


def still(td):
    """Zero force: the poles stay up for the few steps these checks need."""
    return td.set("action", torch.zeros(1))


def test_masked_observation_drops_the_velocities(one_thread):
    env = make_masked_env(seed=0, frames=3)
    td = env.rollout(6, still)
    assert td["observation"].shape == (6, 6) and td["full_observation"].shape == (6, 9)
    torch.testing.assert_close(td["observation"], td["full_observation"][:, list(MASKED_INDEX)])
    assert env.observation_spec["observation"].shape == (6,)
    assert td["is_init"][0].item() and not td["is_init"][1:].any()
    # CatFrames: oldest first, padded with the first frame at the episode start
    torch.testing.assert_close(td[STACK_KEY][3], td["observation"][1:4].reshape(-1))
    torch.testing.assert_close(td[STACK_KEY][0], td["observation"][0].repeat(3))
    noisy = make_masked_env(seed=0, noise_std=0.1).rollout(6, still)
    again = make_masked_env(seed=0, noise_std=0.1).rollout(6, still)
    diff = noisy["observation"] - noisy["full_observation"][:, list(MASKED_INDEX)]
    assert 0.02 < float(diff.std()) < 0.3 and torch.equal(noisy["observation"], again["observation"])
    with pytest.raises(ValueError, match="noise std"):
        make_masked_env(noise_std=-1.0)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_checkpoints_are_small_and_digest_checked(path):
    assert path.stat().st_size <= 2_000_000
    key = path.relative_to(checkpoints.ROOT).as_posix()
    assert key in checkpoints.MANIFEST.read_text(), f"{key} has no digest in {checkpoints.MANIFEST.name}"
    actor, critic, state = load_agent(path)
    meta = state["meta"]
    assert {"frames", "cpu_s", "eval_mean_return", "eval_returns"} <= set(meta)
    assert len(meta["eval_returns"]) == 10


def test_shipped_lstm_reproduces_its_recorded_return(one_thread):
    actor, _, state = load_agent(LSTM_CHECKPOINT)
    env = make_masked_env(obs_stats=state["obs_stats"], **env_kwargs(state["config"], actor))
    ret = evaluate(actor, env, seeds=[0])
    assert ret[0] == pytest.approx(state["meta"]["eval_returns"][0], rel=1e-3)
    assert FRAMESTACK_CHECKPOINT.exists()


def test_episode_split_keeps_episodes_whole():
    is_init = torch.zeros(40, 1, dtype=torch.bool)
    is_init[[0, 10, 20, 30]] = True
    from tensordict import TensorDict

    train, test = episode_split(TensorDict({"is_init": is_init}, batch_size=[40]))
    assert test.tolist() == list(range(30, 40)) and len(train) == 30


def test_training_runs_and_writes_a_loadable_checkpoint(tmp_path, one_thread):
    from agents.pendulum_memory.train import train

    result = train(
        400, tmp_path, frames_per_batch=200, epochs=1, eval_every=2, snapshots=True, log=lambda m: None
    )
    best = result["best"]
    assert (
        best["frames"] == 400
        and (tmp_path / "lstm_best.pt").exists()
        and (tmp_path / "lstm_f400.pt").exists()
    )
    actor, _, state = load_agent(tmp_path / "lstm_best.pt")
    assert state["meta"]["eval_mean_return"] == best["eval_mean_return"]
    again = train(
        200,
        tmp_path / "more",
        frames_per_batch=200,
        epochs=1,
        eval_every=1,
        init=tmp_path / "lstm_best.pt",
        log=lambda m: None,
    )
    assert again["best"]["frames"] == 600  # frame counts continue from the checkpoint


def test_velocity_edit_moves_one_readout_and_patching_runs(one_thread):
    from sklearn.linear_model import Ridge

    from agents.pendulum_memory.interpret import collect, patch_between_episodes, velocity_direction
    from envs.pendulum_masked import VELOCITY_NAMES

    torch.manual_seed(0)
    actor, _, state = load_agent(LSTM_CHECKPOINT)
    data = collect(actor, state, [0, 1, 2], 60)
    x = torch.cat(
        [data["next", "recurrent_state_h"].flatten(1), data["next", "recurrent_state_c"].flatten(1)], 1
    )
    readouts = torch.stack(
        [
            torch.as_tensor(Ridge(alpha=1.0).fit(x.numpy(), data["physics", n].numpy()).coef_)
            for n in VELOCITY_NAMES
        ]
    ).float()
    d, r2 = velocity_direction(data, "w1")
    shift = d / d.pow(2).sum()  # what ShiftAlong(d, 1.0) adds
    torch.testing.assert_close(readouts @ shift, torch.tensor([0.0, 1.0, 0.0]), atol=1e-3, rtol=0)
    assert 0 < r2 <= 1
    patched = patch_between_episodes(actor, state, data, step=5, pairs=2)
    assert len(patched["pairs"]) == 2 and 0 <= patched["sign_agreement"] <= 1
    assert all(abs(p["observed"]) > 0 for p in patched["pairs"])  # another episode's state changes the action
