"""The get-set API against hand-written forwards with explicit interventions."""

import pytest
import torch
from tensordict import TensorDict

from rlhook import HookedModule, ProxyError, hook_count
from tests.models import MLP


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MLP(depth=4).double()


@pytest.fixture
def td():
    return TensorDict({"input": torch.randn(6, 16, dtype=torch.float64)}, batch_size=[6])


def manual(model, x, replace=None, grad_at=None, grad_fn=None):
    """Reference forward: ``replace = {i: fn(h) -> h}`` on the output of layers[i]."""
    acts = []
    h = x
    for i, layer in enumerate(model.layers):
        h = layer(h)
        if replace and i in replace:
            h = replace[i](h)
        if grad_fn and i == grad_at:
            h.register_hook(grad_fn)
        acts.append(h)
    return model.head(h), acts


def test_save_and_set(model, td):
    hooked = HookedModule(model)
    with hooked.run(td.clone()) as run:
        h1 = run.save("layers.1")
        run.set("layers[2]", lambda out: out * 0.5)
        h2 = run.save("layers.2")  # declared after the set: sees the new value
        inp = run.save_input("layers.3")
        with pytest.raises(ProxyError, match="before the run executed"):
            h1.resolve()
    out, acts = manual(model, td["input"], replace={2: lambda h: h * 0.5})
    torch.testing.assert_close(run.output["output"], out)
    torch.testing.assert_close(h1.resolve(), acts[1])
    torch.testing.assert_close(h2.resolve(), acts[2])
    torch.testing.assert_close(inp.resolve(), acts[2])
    assert hook_count(model) == 0


def test_set_with_tensor_proxy_and_input(model, td):
    hooked = HookedModule(model)
    with hooked.run(td.clone()) as run:
        src = run.save("layers.0")
        run.set("layers.2", src)  # proxy: layers.2 now outputs layers.0's value
        run.set_input("layers.3", torch.ones(32, dtype=torch.float64))  # broadcast over the batch
    x = td["input"]
    a0 = model.layers[0](x)
    ref = model.head(model.layers[3](torch.ones(6, 32, dtype=torch.float64)))
    torch.testing.assert_close(run.output["output"], ref)
    torch.testing.assert_close(src.resolve(), a0)
    with pytest.raises(ValueError, match=r"does not broadcast to the original shape \(6, 32\)"):
        with hooked.run(td.clone()) as run:
            run.set("layers.1", torch.zeros(5, 32))
    with pytest.raises(ProxyError, match="used before that module ran"):
        with hooked.run(td.clone()) as run:
            late = run.save("layers.3")
            run.set("layers.1", late)
    assert hook_count(model) == 0


def test_save_grad_and_set_grad(model, td):
    hooked = HookedModule(model)
    target = lambda out: out["output"][:, 2]
    with hooked.run(td.clone()) as run:
        g1 = run.save_grad("layers.1")
        g3 = run.save_grad("layers.3")
        run.backward(target)
    x = td["input"]
    out, acts = manual(model, x)
    ref = torch.autograd.grad(out[:, 2].sum(), [acts[1], acts[3]])
    torch.testing.assert_close(g1.resolve(), ref[0])
    torch.testing.assert_close(g3.resolve(), ref[1])

    with hooked.run(td.clone()) as run:
        run.set_grad("layers.2", lambda g: g * 3.0)
        g1 = run.save_grad("layers.1")
        run.backward(target)
    out, acts = manual(model, x, grad_at=2, grad_fn=lambda g: g * 3.0)
    torch.testing.assert_close(g1.resolve(), torch.autograd.grad(out[:, 2].sum(), acts[1])[0])
    with pytest.raises(ProxyError, match="needs a target"):
        with hooked.run(td.clone()) as run:
            run.save_grad("layers.1")
    assert hook_count(model) == 0


def test_stop_and_unfired(model, td):
    hooked = HookedModule(model)
    with hooked.run(td.clone()) as run:
        h = run.save("layers.1")
        later = run.save("layers.3")
        run.stop("layers.1")
    assert run.stopped and "output" not in run.output.keys()
    torch.testing.assert_close(h.resolve(), manual(model, td["input"])[1][1])
    with pytest.raises(ProxyError, match="never ran.*stopped"):
        later.resolve()
    assert hook_count(model) == 0


def test_module_called_twice():
    lin = torch.nn.Linear(4, 4)

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    x = torch.randn(2, 4)
    with HookedModule(Twice()).run(TensorDict({"input": x}, batch_size=[2])) as run:
        first, last = run.save("lin", call=0), run.save("lin")
    torch.testing.assert_close(first.resolve(), lin(x))
    torch.testing.assert_close(last.resolve(), lin(lin(x)))


def test_reusable_run_executes_per_call_and_leaves_no_hook(model, td):
    hooked = HookedModule(model)
    with hooked.run(reusable=True) as run:  # declared once; the block does not execute it
        h = run.save("layers.1")
        run.set("layers.2", lambda out: 2 * out)
    assert not run.done and hook_count(model) == 0
    for scale in (1.0, -3.0):
        x = td.clone()
        x["input"] = scale * td["input"]
        out = run.execute(x)
        head, acts = manual(model, x["input"], replace={2: lambda out: 2 * out})
        torch.testing.assert_close(h.resolve(), acts[1])  # this call's value, not the first call's
        torch.testing.assert_close(out["output"], head)
        assert len(h.calls) == 1 and hook_count(model) == 0
    run.clear()  # lets go of the values and of the last call's TensorDicts
    assert h.calls == [] and run.td is None and run.output is None
    with pytest.raises(TypeError, match="executes on a TensorDict"):
        run.execute()
    bad = TensorDict({"input": torch.randn(6, 3, dtype=torch.float64)}, batch_size=[6])
    with pytest.raises(RuntimeError):  # a failing forward: hooks still removed, the next call works
        run.execute(bad)
    assert hook_count(model) == 0
    run.execute(td.clone())
    torch.testing.assert_close(h.resolve(), manual(model, td["input"])[1][1])


def test_hooks_share_torchs_handle_ids():
    """Hooks.forward without options skips RemovableHandle; its ids come from torch's own counter, so removing
    one hook, ours or torch's, never removes the other."""
    from rlhook.hooks import Hooks

    lin, seen = torch.nn.Linear(2, 2), []
    torch_handle = lin.register_forward_hook(lambda m, a, o: seen.append("torch"))
    with Hooks() as hooks:
        hooks.forward(lin, lambda m, a, o: seen.append("ours"))
        hooks.forward_pre(lin, lambda m, a: seen.append("pre"))
        later = lin.register_forward_hook(lambda m, a, o: seen.append("later"))
        lin(torch.zeros(2))
        assert seen == ["pre", "torch", "ours", "later"]
        torch_handle.remove()
        seen.clear()
        lin(torch.zeros(2))
        assert seen == ["pre", "ours", "later"]
    seen.clear()
    lin(torch.zeros(2))
    assert seen == ["later"]
    later.remove()
    assert hook_count(lin) == 0
