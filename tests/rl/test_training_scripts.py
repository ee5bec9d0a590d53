"""rlhook added to PPO, SAC and DQN training loops by one line, ``actor = Recorder(actor, ...)``, with the same
actor object given to the collector and to the loss: nothing else in the script changes, the loss trains, its
checkpoint keeps its keys (it loads into a script without rlhook and back), and the rollouts carry the
activations.
"""

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")

from tensordict.nn import TensorDictModule, TensorDictSequential  # noqa: E402
from torchrl.collectors import Collector  # noqa: E402
from torchrl.envs import GymEnv  # noqa: E402
from torchrl.modules import MLP, EGreedyModule, QValueActor, ValueOperator  # noqa: E402
from torchrl.objectives import ClipPPOLoss, DQNLoss, SACLoss  # noqa: E402
from torchrl.objectives.value import GAE  # noqa: E402

from agents.pendulum.nets import make_actor, make_critic  # noqa: E402
from envs.pendulum import make_env  # noqa: E402
from rlhook import hook_count  # noqa: E402
from rlhook.rl import Recorder  # noqa: E402

pytestmark = pytest.mark.slow
ACTS = r"module\.0\.module\.act\d"


def same_keys_and_round_trip(loss_with, loss_without, tmp_path):
    """The loss built on the recorder has the bare loss's state_dict keys; checkpoints load both ways."""
    assert list(loss_with.state_dict()) == list(loss_without.state_dict())
    torch.save(loss_with.state_dict(), tmp_path / "with.pt")
    loss_without.load_state_dict(torch.load(tmp_path / "with.pt", weights_only=True))
    loss_with.load_state_dict(loss_without.state_dict())
    for (k, a), b in zip(loss_with.state_dict().items(), loss_without.state_dict().values()):
        assert torch.equal(a, b), k


def train(collector, loss, terms, prepare=None, steps=2):
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    batches = []
    for batch in collector:
        if prepare is not None:
            prepare(batch)
        out = loss(batch)
        total = sum(out[t] for t in terms)
        opt.zero_grad()
        total.backward()
        opt.step()
        collector.update_policy_weights_()
        batches.append(batch)
        if len(batches) == steps:
            break
    collector.shutdown()
    return batches


def test_ppo_one_line(tmp_path):
    torch.manual_seed(0)
    actor, critic = make_actor(), make_critic()
    bare = ClipPPOLoss(make_actor(), make_critic())
    actor = Recorder(actor, ACTS)  # the only line rlhook adds
    collector = Collector(make_env(seed=0), actor, frames_per_batch=64, total_frames=128)
    loss = ClipPPOLoss(actor, critic)
    before = actor.policy.module[0].module.fc0.weight.clone()
    first = next(iter(Collector(make_env(seed=5), actor, frames_per_batch=16, total_frames=16)))
    net = actor.policy.module[0].module
    torch.testing.assert_close(
        first["rlhook", "module.0.module.act0"], net.act0(net.fc0(first["observation"]))
    )
    gae = GAE(gamma=0.99, lmbda=0.95, value_network=critic)
    batches = train(
        collector,
        loss,
        ["loss_objective", "loss_critic", "loss_entropy"],
        lambda b: gae(b.set_("next", b["next"])),
    )
    assert all(b["rlhook", "module.0.module.act1"].shape == (64, 256) for b in batches)
    assert not torch.equal(net.fc0.weight, before)  # the loss trained the collector's policy
    same_keys_and_round_trip(loss, bare, tmp_path)
    assert hook_count(actor.policy) == 0


def test_sac_with_parallel_env(tmp_path):
    torch.manual_seed(0)

    def qnet():
        return ValueOperator(
            MLP(in_features=10, out_features=1, num_cells=[64, 64]),
            in_keys=["observation", "action"],
            out_keys=["state_action_value"],
        )

    bare = SACLoss(make_actor(), qnet(), num_qvalue_nets=2)
    bare.make_value_estimator(gamma=0.99)
    actor = Recorder(make_actor(), ACTS)
    collector = Collector(make_env(seed=0, parallel=2), actor, frames_per_batch=40, total_frames=80)
    loss = SACLoss(actor, qnet(), num_qvalue_nets=2)
    loss.make_value_estimator(gamma=0.99)
    batches = train(collector, loss, ["loss_actor", "loss_qvalue", "loss_alpha"])
    assert all(b["rlhook", "module.0.module.act1"].shape == (2, 20, 256) for b in batches)
    assert all(b["rlhook", "recorded"].all() for b in batches)
    same_keys_and_round_trip(loss, bare, tmp_path)


def test_dqn_epsilon_greedy_with_random_frames(tmp_path):
    torch.manual_seed(0)
    env = GymEnv("CartPole-v1")
    env.set_seed(0)

    def qactor():
        net = TensorDictModule(
            torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)),
            in_keys=["observation"],
            out_keys=["action_value"],
        )
        return QValueActor(net, in_keys=["observation"], spec=env.action_spec)

    bare = DQNLoss(qactor(), action_space=env.action_spec, delay_value=True)
    value = Recorder(qactor(), r"module\.0\.module\.1")
    loss = DQNLoss(value, action_space=env.action_spec, delay_value=True)
    for dqn in (bare, loss):
        dqn.make_value_estimator(gamma=0.99)
    explore = TensorDictSequential(value, EGreedyModule(env.action_spec, eps_init=0.5))
    collector = Collector(env, explore, frames_per_batch=32, total_frames=96, init_random_frames=32)
    batches = train(collector, loss, ["loss"], steps=3)
    key = ("rlhook", "module.0.module.1")
    assert not batches[0]["rlhook", "recorded"].any()  # random frames: the policy never ran
    assert (batches[0][key] == 0).all()
    later = batches[2]
    assert later["rlhook", "recorded"].all()
    q = value.policy.module[0].module  # weights changed by the loss since collection: compare the structure
    assert later[key].shape == (32, 32) and (later[key] >= 0).all()  # after the ReLU
    assert q[0].weight.grad is not None
    same_keys_and_round_trip(loss, bare, tmp_path)
