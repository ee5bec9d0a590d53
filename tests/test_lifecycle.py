"""Hook bookkeeping under faults and over many calls (the per-method contracts are in test_contracts.py)."""

import gc
import tracemalloc

import pytest
import torch
from tensordict import TensorDict

from rlhook import HookedModule, Hooks, hook_count
from rlhook.latent import ActivationCaching
from tests.latent.helpers import assert_unchanged, snapshot
from tests.models import MLP
from tests.registry import Boom


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = MLP()
    m.layers[1].eval()  # mixed training flags must come back as they were
    m.head.weight.requires_grad_(False)
    return m


@pytest.fixture
def td():
    return TensorDict({"input": torch.randn(4, 16)}, batch_size=[4])


def test_failure_in_run_callback_and_in_removal(model, td):
    before = snapshot(model)
    hooked = HookedModule(model)
    with pytest.raises(Boom):
        with hooked.run(td.clone()) as run:
            run.save("layers.0")
            run.set("layers.1", lambda out: (_ for _ in ()).throw(Boom("callback")))
    assert_unchanged(model, before)

    hooks = Hooks()

    hooks.forward(model.layers[0], lambda *a: None)
    hooks.undo(lambda: (_ for _ in ()).throw(Boom("removal")))
    hooks.forward(model.layers[1], lambda *a: None)
    with pytest.raises(Boom, match="removal"):
        hooks.remove()
    assert hook_count(model) == 0  # the failing handle did not stop the others from going


def test_repeated_prepared_calls_do_not_grow(model, td):
    method = ActivationCaching(r"layers\.\d", direction="both", target="output")

    def once():
        with method.prepare(model) as hooked:
            hooked(td.clone())

    for _ in range(20):  # warm-up: allocator and caches settle
        once()
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for _ in range(1000):
        once()
        assert hook_count(model) == 0
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert after - base < 200_000, f"python memory grew by {after - base} bytes over 1000 calls"
