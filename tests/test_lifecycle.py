"""Every exit path leaves the model as it was: no hook, same parameters (bitwise), same training flags."""

import gc
import tracemalloc

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rlhook import HookedModule, Hooks, hook_count
from rlhook.attribution import IntegratedGradients, Saliency
from rlhook.latent import ActivationCaching
from tests.models import MLP


class Boom(RuntimeError):
    pass


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
    )


def assert_unchanged(model: nn.Module, before) -> None:
    state, training, requires_grad, grads = before
    assert hook_count(model) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert all(p.grad is None for p in model.parameters()) and all(g is None for g in grads)


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


METHODS = {
    "saliency": lambda: Saliency(target=lambda o: o["output"][:, 0]),
    "ig": lambda: IntegratedGradients(target=lambda o: o["output"][:, 0], n_steps=4, chunk_size=5),
    "caching": lambda: ActivationCaching(r"layers\.\d", direction="both", target="output"),
}


@pytest.mark.parametrize("name", METHODS)
def test_success_leaves_no_trace(model, td, name):
    before = snapshot(model)
    with METHODS[name]().prepare(model) as hooked:
        assert hook_count(model) >= 0
        hooked(td.clone())
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("where", ["model", "target", "block", "interrupt"])
def test_failures_leave_no_trace(model, td, name, where):
    before = snapshot(model)
    handle = None
    if where == "model":
        handle = model.layers[2].register_forward_hook(lambda *a: (_ for _ in ()).throw(Boom("in model")))
        before = snapshot(model)
    method = METHODS[name]()
    if where == "target" and name != "caching":
        method.options.target = lambda o: (_ for _ in ()).throw(Boom("in target"))
    if where == "target" and name == "caching":
        method.target = lambda o: (_ for _ in ()).throw(Boom("in target"))
    exc = KeyboardInterrupt if where == "interrupt" else Boom
    with pytest.raises(exc):
        with method.prepare(model) as hooked:
            if where in ("block", "interrupt"):
                hooked(td.clone())
                raise exc("in the user's block")
            hooked(td.clone())
    if handle is not None:
        assert hook_count(model) == 1
        handle.remove()
        before = (before[0], before[1], before[2], before[3])
    assert hook_count(model) == 0
    assert_unchanged(model, snapshot(model) if handle else before)
    state = before[0]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_failure_in_run_callback_and_in_removal(model, td):
    before = snapshot(model)
    hooked = HookedModule(model)
    with pytest.raises(Boom):
        with hooked.run(td.clone()) as run:
            run.save("layers.0")
            run.set("layers.1", lambda out: (_ for _ in ()).throw(Boom("callback")))
    assert_unchanged(model, before)

    hooks = Hooks()

    class BadHandle:
        def remove(self):
            raise Boom("removal")

    hooks.forward(model.layers[0], lambda *a: None)
    hooks._keep(BadHandle())
    hooks.forward(model.layers[1], lambda *a: None)
    with pytest.raises(Boom, match="removal"):
        hooks.remove()
    assert hook_count(model) == 0  # the failing handle did not stop the others from going


def test_repeated_prepared_calls_do_not_grow(model, td):
    method = METHODS["caching"]()

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
