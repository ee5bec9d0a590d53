"""Streaming analysis over a memory-mapped replay buffer equals the same analysis in memory.

The store is real: a Recorder's rollouts of the pendulum actor through a TorchRL Collector, written to a
ReplayBuffer on LazyMemmapStorage. Chunk sizes are chosen so that every streamed fit crosses chunk borders.
"""

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")

from torchrl.collectors import Collector  # noqa: E402
from torchrl.data import LazyMemmapStorage, ReplayBuffer  # noqa: E402

from agents.pendulum.nets import make_actor  # noqa: E402
from envs.pendulum import make_env  # noqa: E402
from rlhook.keys import MissingKeyError  # noqa: E402
from rlhook.latent import LogisticProbe, RidgeProbe, linear_cka, train_sae  # noqa: E402
from rlhook.latent.stores import chunks, fit_probe, rows_of, sample, stream_cka, train_sae_stream  # noqa: E402
from rlhook.rl import Recorder  # noqa: E402

A0, A1 = ("rlhook", "module.0.module.act0"), ("rlhook", "module.0.module.act1")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    torch.manual_seed(0)
    rec = Recorder(make_actor(), r"module\.0\.module\.act\d")
    rb = ReplayBuffer(storage=LazyMemmapStorage(1000, scratch_dir=tmp_path_factory.mktemp("store")))
    collector = Collector(make_env(seed=0), rec, frames_per_batch=150, total_frames=600)
    for batch in collector:
        batch["label"] = (batch["action"][..., 0] > 0).long()
        rb.extend(batch.exclude("next"))
    collector.shutdown()
    memory = rb.storage._storage[: len(rb)].clone()  # the same rows, in RAM
    assert rb.storage._storage.get(A1).filename is not None  # really on disk
    return rb, memory


def test_chunks_and_samples_read_the_rows(stores):
    rb, memory = stores
    assert rows_of(rb) == 600
    got = torch.cat([c.get(A1) for c in chunks(rb, [A1], chunk_size=128, progress=False)])
    torch.testing.assert_close(got, memory.get(A1), rtol=0, atol=0)
    part = list(chunks(rb, [A0, "observation"], chunk_size=100, start=250, stop=420, progress=False))
    assert [len(c) for c in part] == [100, 70]
    torch.testing.assert_close(part[1]["observation"], memory["observation"][350:420], rtol=0, atol=0)
    s = sample(rb, [A1, "observation"], 50, seed=3)
    again = sample(memory, [A1, "observation"], 50, seed=3)
    torch.testing.assert_close(s.get(A1), again.get(A1), rtol=0, atol=0)
    assert len(set(s["observation"][:, 0].tolist())) == 50  # without replacement
    with pytest.raises(MissingKeyError, match="observation"):
        next(chunks(rb, [("rlhook", "act9")], progress=False))
    with pytest.raises(ValueError, match="from a store of 600"):
        sample(rb, [A1], 601)


def test_streamed_ridge_equals_the_in_memory_fit(stores):
    rb, memory = stores
    y_key = "observation"  # every observation dim read back from the second hidden layer
    x, y = memory.get(A1), memory[y_key]
    streamed = fit_probe(RidgeProbe(alpha=0.5), rb, A1, y_key, chunk_size=97, progress=False)
    direct = RidgeProbe(alpha=0.5).fit(x, y)
    # float32 Gram blocks round differently from one float32 Gram: equal fits, not equal bits
    torch.testing.assert_close(streamed.predict(x), direct.predict(x), rtol=0, atol=1e-3 * y.std().item())
    exact = fit_probe(RidgeProbe(alpha=0.5), _double(rb), A1, y_key, chunk_size=97, progress=False)
    reference = RidgeProbe(alpha=0.5).fit(x.double(), y.double())
    torch.testing.assert_close(exact.coef_, reference.coef_, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(exact.intercept_, reference.intercept_, rtol=1e-7, atol=1e-10)


def test_streamed_logistic_equals_the_in_memory_fit(stores):
    rb, memory = stores
    x = memory.get(A0).double()
    assert 0 < memory["label"].float().mean() < 1
    streamed = fit_probe(
        LogisticProbe(C=0.05, tol=1e-10, max_iter=500),
        _double(rb),
        A0,
        "label",
        chunk_size=128,
        progress=False,
    )
    direct = LogisticProbe(C=0.05, tol=1e-10, max_iter=500).fit(x, memory["label"])
    torch.testing.assert_close(streamed.coef_, direct.coef_, rtol=1e-5, atol=1e-7)
    assert torch.equal(streamed.predict(x), direct.predict(x))
    three = memory["label"] + (memory["observation"][:, 0] > 0).long()  # softmax branch, 3 classes
    memory3 = memory.select(A0).apply(torch.Tensor.double).set("y3", three)
    s3 = fit_probe(
        LogisticProbe(C=0.05, tol=1e-10, max_iter=500), memory3, A0, "y3", chunk_size=111, progress=False
    )
    d3 = LogisticProbe(C=0.05, tol=1e-10, max_iter=500).fit(memory3.get(A0), three)
    torch.testing.assert_close(s3.coef_, d3.coef_, rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="RidgeProbe and LogisticProbe"):
        fit_probe(object(), rb, A0, "label")


def _double(rb):
    """The memory-mapped rows, activations in float64 (the in-memory reference's dtype), still chunked."""
    return rb.storage._storage[: len(rb)].apply(lambda t: t.double() if t.is_floating_point() else t)


def test_streamed_cka_is_exact(stores):
    rb, memory = stores
    exact = linear_cka(memory.get(A0), memory.get(A1))
    assert abs(stream_cka(_double(rb), A0, A1, chunk_size=64, progress=False) - exact) < 1e-12
    assert abs(stream_cka(rb, A0, A1, chunk_size=64, progress=False) - exact) < 1e-5  # float32 products
    assert abs(stream_cka(rb, A1, A1, progress=False) - 1.0) < 1e-9
    assert (
        abs(
            stream_cka(rb, A0, "observation", chunk_size=50, progress=False)
            - linear_cka(memory.get(A0), memory["observation"])
        )
        < 1e-5
    )


def test_streamed_sae_does_not_depend_on_where_rows_live(stores):
    rb, memory = stores
    kw = dict(epochs=2, batch_size=64, chunk_size=200, seed=1, progress=False)
    disk = train_sae_stream(rb, A1, 32, **kw)
    ram = train_sae_stream(memory, A1, 32, **kw)
    assert disk.history == ram.history and len(disk.history) == 2 * 3 * 4
    for a, b in zip(disk.parameters(), ram.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert sum(disk.history[-4:]) < sum(disk.history[:4])  # it learns
    x = memory.get(A1)
    err = (disk(x) - x).pow(2).sum(-1).mean()
    baseline = (train_sae(x, 32, steps=len(disk.history), batch_size=64, seed=1)(x) - x).pow(2).sum(-1).mean()
    assert err < 2 * baseline  # as good as the in-memory trainer with the same number of steps, roughly


def test_slices_and_several_batch_dims_read_the_right_rows(tmp_path):
    from tensordict import TensorDict

    rb = ReplayBuffer(storage=LazyMemmapStorage(100, scratch_dir=tmp_path))
    rollouts = TensorDict(
        {"a": torch.arange(8 * 5 * 3.0).reshape(8, 5, 3)}, [8, 5]
    )  # [n_envs, T] as collected
    rb.extend(rollouts)
    flat = rollouts["a"].reshape(40, 3)
    assert rows_of(rb) == 40
    got = torch.cat([c["a"] for c in chunks(rb, ["a"], chunk_size=7, progress=False)])
    torch.testing.assert_close(got, flat, rtol=0, atol=0)
    table = rb.storage._storage[: len(rb)]
    late = table[2:]  # a view that starts inside the file
    assert late.get("a").filename is not None and late.get("a").storage_offset() > 0
    got = torch.cat([c["a"] for c in chunks(late, ["a"], chunk_size=4, progress=False)])
    torch.testing.assert_close(got, flat[10:], rtol=0, atol=0)
    torch.testing.assert_close(
        sample(late, ["a"], 30, seed=2)["a"], sample(flat_td(flat[10:]), ["a"], 30, seed=2)["a"]
    )


def flat_td(a):
    from tensordict import TensorDict

    return TensorDict({"a": a}, [len(a)])
