"""The recorder's keys reach Collector, ParallelEnv and MultiSyncCollector batches, and equal a separate forward."""

import functools
import pickle

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")

from torchrl.collectors import Collector, MultiSyncCollector  # noqa: E402
from torchrl.data import LazyTensorStorage, ReplayBuffer  # noqa: E402

from agents.pendulum.nets import make_actor  # noqa: E402
from envs.pendulum import make_env  # noqa: E402
from rlhook import hook_count  # noqa: E402
from rlhook.rl import Recorder  # noqa: E402

LAYERS = r"module\.0\.module\.act\d"
NAMES = ["module.0.module.act0", "module.0.module.act1"]


def hidden(actor, obs):
    net = actor.module[0].module
    h0 = net.act0(net.fc0(obs))
    return {NAMES[0]: h0, NAMES[1]: net.act1(net.fc1(h0))}


def check(batch, actor):
    ref = hidden(actor, batch["observation"])
    for name in NAMES:
        assert batch["rlhook", name].shape == (*batch.batch_size, 256)
        torch.testing.assert_close(batch["rlhook", name], ref[name])


@pytest.fixture(scope="module")
def actor():
    torch.manual_seed(0)
    return make_actor()


def test_keys_declared_and_picklable(actor):
    rec = Recorder(actor, LAYERS)
    assert [("rlhook", n) for n in NAMES] + [("rlhook", "recorded")] == rec.out_keys[-3:]
    clone = pickle.loads(pickle.dumps(rec))
    assert clone.names == NAMES and hook_count(actor) == 0
    with pytest.raises(TypeError, match="TensorDictModule"):
        Recorder(torch.nn.Linear(2, 2), "weight")


def test_collector_and_replay_buffer(actor):
    rec = Recorder(actor, LAYERS)
    collector = Collector(make_env(seed=0), rec, frames_per_batch=40, total_frames=80)
    rb = ReplayBuffer(storage=LazyTensorStorage(100))
    for batch in collector:
        assert batch.batch_size == (40,)
        check(batch, actor)
        rb.extend(batch)
    collector.shutdown()
    sample = rb.sample(16)
    check(sample, actor)
    assert hook_count(actor) == 0


def test_parallel_env(actor):
    collector = Collector(
        make_env(seed=0, parallel=2), Recorder(actor, LAYERS), frames_per_batch=20, total_frames=20
    )
    batch = next(iter(collector))
    collector.shutdown()
    assert batch.batch_size == (2, 10)
    check(batch, actor)


@pytest.mark.slow
def test_multisync_collector_spawned_workers(actor):
    collector = MultiSyncCollector(
        [functools.partial(make_env, seed=0)] * 2,
        Recorder(actor, LAYERS),
        frames_per_batch=20,
        total_frames=20,
    )
    batch = next(iter(collector))
    collector.shutdown()
    assert batch.batch_size == (2, 10)
    check(batch, actor)


def test_flattened_batch_dims_are_restored():
    """A policy that folds a (3, 4) batch into 12 rows (as conv nets do) records (3, 4, ...) again; an
    unbatched frame keeps the leading dim the policy added."""
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(5, 2)

        def forward(self, x):
            return self.lin(x.reshape(-1, 5)).reshape(*x.shape[:-1], 2)

    policy = TensorDictModule(Flat(), ["x"], ["y"])
    rec = Recorder(policy, "module.lin")
    out = rec(TensorDict({"x": torch.randn(3, 4, 5)}, [3, 4]))
    assert out["rlhook", "module.lin"].shape == (3, 4, 2)
    torch.testing.assert_close(out["rlhook", "module.lin"], out["y"])
    single = rec(TensorDict({"x": torch.randn(5)}, []))
    assert single["rlhook", "module.lin"].shape == (1, 2)


def test_checkpoints_round_trip_through_a_recorder(actor, tmp_path):
    """A checkpoint of the bare policy loads into the recorder and back, also nested in a parent module (as a
    collector or trainer saves it)."""
    torch.manual_seed(3)
    rec, other = Recorder(make_actor(), LAYERS), make_actor()
    assert rec.state_dict().keys() == actor.state_dict().keys()
    rec.load_state_dict(actor.state_dict())
    for k, v in actor.state_dict().items():
        assert torch.equal(rec.state_dict()[k], v), k
    torch.save(torch.nn.ModuleDict({"policy": rec}).state_dict(), tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert set(saved) == {f"policy.{k}" for k in actor.state_dict()}
    torch.nn.ModuleDict({"policy": other}).load_state_dict(saved)  # recorder checkpoint -> bare policy
    torch.nn.ModuleDict({"policy": Recorder(make_actor(), LAYERS)}).load_state_dict(saved)  # and back
    for k, v in actor.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    from tensordict import TensorDict

    obs = TensorDict({"observation": torch.randn(3, 9)}, [3])
    torch.testing.assert_close(rec(obs.clone())["loc"], actor.module[0](obs.clone())["loc"])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_policies_record_an_element_through_a_collector(kind):
    """TorchRL's LSTMModule/GRUModule run an nn.LSTM/GRU that returns a tuple; "module.0.<rnn>@0" records its
    output sequence, equal to the module's own output key, step by step in a Collector; in recurrent mode the
    module packs the batch's sequences, which the recorder refuses with an error saying what to record."""
    from tensordict.nn import TensorDictModule, TensorDictSequential
    from torchrl.envs import InitTracker, TransformedEnv
    from torchrl.modules import MLP, GRUModule, LSTMModule, set_recurrent_mode

    torch.manual_seed(0)
    rnn_cls = LSTMModule if kind == "lstm" else GRUModule
    rnn = rnn_cls(input_size=9, hidden_size=16, in_key="observation", out_key="embed")
    env = TransformedEnv(make_env(seed=0), InitTracker())
    env.append_transform(rnn.make_tensordict_primer())
    head = TensorDictModule(MLP(in_features=16, out_features=1, num_cells=[]), ["embed"], ["action"])
    rec = Recorder(TensorDictSequential(rnn, head), [f"module.0.{kind}@0"])
    collector = Collector(env, rec, frames_per_batch=24, total_frames=24)
    batch = next(iter(collector))
    collector.shutdown()
    key = ("rlhook", f"module.0.{kind}@0")
    torch.testing.assert_close(batch[key].reshape(24, 16), batch["embed"])
    with (
        set_recurrent_mode(True),
        pytest.raises(TypeError, match="PackedSequence"),
    ):  # packed: refused clearly
        rec(batch.exclude("rlhook", "embed").unsqueeze(0))
    assert hook_count(rec.policy) == 0


def test_random_exploration_frames_are_marked(actor):
    """Frames the collector fills without the policy (init_random_frames) hold zeros: the mask says which."""
    rec = Recorder(actor, LAYERS)
    collector = Collector(make_env(seed=0), rec, frames_per_batch=20, total_frames=60, init_random_frames=20)
    batches = list(collector)
    collector.shutdown()
    assert not batches[0]["rlhook", "recorded"].any()
    assert (batches[0]["rlhook", NAMES[1]] == 0).all()  # what the mask exists for
    for batch in batches[1:]:
        assert batch["rlhook", "recorded"].all()
        check(batch, actor)


def test_copies_record_their_own_calls_and_hold_nothing_between_calls(actor):
    """The recorder's run is declared once per object: a pickled or deep-copied recorder records through its
    own modules, and no activation or hook outlives a call (also after a failing call)."""
    import copy

    from tensordict import TensorDict

    rec = Recorder(actor, LAYERS)
    obs = torch.randn(5, actor.module[0].module.fc0.in_features)
    first = rec(TensorDict({"observation": obs}, batch_size=[5]))
    twin = copy.deepcopy(rec)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(-1.0)
    for other in (twin, pickle.loads(pickle.dumps(twin))):
        got = other(TensorDict({"observation": obs}, batch_size=[5]))
        torch.testing.assert_close(got["rlhook", NAMES[0]], hidden(other.policy, obs)[NAMES[0]])
        assert not torch.allclose(got["rlhook", NAMES[0]], first["rlhook", NAMES[0]])
    again = rec(TensorDict({"observation": obs}, batch_size=[5]))  # the original is unaffected
    torch.testing.assert_close(again["rlhook", NAMES[1]], first["rlhook", NAMES[1]])
    run, saved = rec._capture()
    assert all(p.calls == [] for p in saved.values()) and run.td is None
    with pytest.raises(RuntimeError):
        rec(TensorDict({"observation": torch.randn(5, 3)}, batch_size=[5]))
    assert hook_count(actor) == 0 and all(p.calls == [] for p in saved.values())
