"""Splices, pruning and task vectors against hand-written forwards and manual weight edits."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rlhook import hook_count
from rlhook.attribution import InputXGradient
from rlhook.weights import LowRank, Pruning, Splice, TaskVector
from tests.latent.helpers import Boom, assert_unchanged, check_lifecycle, snapshot
from tests.models import MLP, two_input_td, two_input_td_module


def mlp_forward(model: MLP, x: torch.Tensor, edit: dict | None = None) -> torch.Tensor:
    """Reference forward of ``MLP`` with ``edit[i](h)`` applied after block ``i``."""
    edit = edit or {}
    h = x
    for i, layer in enumerate(model.layers):
        h = torch.relu(layer[0](h))
        if i in edit:
            h = edit[i](h)
    return model.head(h)


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP()


@pytest.fixture
def td():
    torch.manual_seed(1)
    return TensorDict({"input": torch.randn(6, 16)}, batch_size=[6])


# -- adapters ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["replace", "add", "before"])
def test_adapter_matches_reference(mlp, td, mode):
    torch.manual_seed(2)
    edit = LowRank(32, 4, init_scale=0.5)
    with torch.no_grad():
        with Splice("layers.1", edit, mode=mode).prepare(mlp) as hooked:
            out = hooked(td.clone())["output"]
        if mode == "before":  # input of layers.1 = output of layers.0
            ref = mlp_forward(mlp, td["input"], {0: edit})
        else:
            ref = mlp_forward(mlp, td["input"], {1: edit if mode == "replace" else lambda h: h + edit(h)})
        plain = mlp_forward(mlp, td["input"])
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(out, plain)


def test_adapter_between_two_points(mlp, td):
    edit = nn.Linear(32, 32)
    with torch.no_grad(), Splice("layers.2", edit, mode="add", source="layers.0").prepare(mlp) as hooked:
        out = hooked(td.clone())["output"]
        h0 = torch.relu(mlp.layers[0][0](td["input"]))
        h2 = torch.relu(mlp.layers[2][0](torch.relu(mlp.layers[1][0](h0))))
        ref = mlp.head(h2 + edit(h0))
    torch.testing.assert_close(out, ref)


def test_adapter_no_surgery_and_lifecycle(mlp, td):
    check_lifecycle(Splice({"layers.0": LowRank(32, 2, init_scale=1.0), "layers.2": nn.Identity()}), mlp, td)
    with pytest.raises(ValueError, match="shape"):
        with Splice("layers.0", nn.Linear(32, 5)).prepare(mlp) as hooked:
            hooked(td.clone())
    assert hook_count(mlp) == 0


def test_adapter_td_module():
    module = two_input_td_module()
    td = two_input_td()
    with torch.no_grad():
        with Splice("obs_net", lambda h: -h).prepare(module) as hooked:
            out = hooked(td.clone())
        inner = module.module  # reference outside the block (inside, obs_net is edited)
        h = -inner.obs_net(td["obs"]) * inner.goal_net(td["goal"])
        torch.testing.assert_close(out["state_value"], inner.value(h))


# -- pruning -----------------------------------------------------------------------------------------------------
def test_magnitude_unstructured_matches_manual(mlp, td):
    w = mlp.layers[0][0].weight.detach().clone()
    with torch.no_grad(), Pruning("layers.0.0", amount=0.3).prepare(mlp) as hooked:
        out = hooked(td.clone())["output"]
        pruned = mlp.layers[0][0].weight.detach().clone()
    n = round(0.3 * w.numel())
    threshold = w.abs().flatten().sort().values[n - 1]
    manual = torch.where(w.abs() <= threshold, torch.zeros_like(w), w)
    assert torch.equal(pruned, manual)
    assert (pruned == 0).sum() == n
    assert torch.equal(mlp.layers[0][0].weight, w)  # restored
    with torch.no_grad():
        lin = nn.Linear(16, 32)
        lin.weight.copy_(manual), lin.bias.copy_(mlp.layers[0][0].bias)
        ref = mlp.head(mlp.layers[2](mlp.layers[1](torch.relu(lin(td["input"])))))
    torch.testing.assert_close(out, ref)


def test_structured_global_and_grad_x_weight(mlp, td):
    with Pruning(["layers.0.0", "layers.1.0"], amount=0.25, structured=True, scope="global").prepare(
        mlp
    ) as h:
        m = h.state.masks
        rows0 = (~m["layers.0.0"].all(1)).sum() + (~m["layers.1.0"].all(1)).sum()
        assert rows0 == 16 and (mlp.layers[0][0].bias[~m["layers.0.0"].all(1)] == 0).all()
    target = lambda out: out["output"][..., 0]
    with Pruning("head", amount=0.5, importance="grad_x_weight", data=td, target=target).prepare(mlp) as h:
        mask = h.state.masks["head"]
    with torch.enable_grad():  # manual |W * dT/dW|: only row 0 of the head has a gradient for output 0
        (g,) = torch.autograd.grad(mlp(td["input"])[:, 0].sum(), mlp.head.weight)
    score = (mlp.head.weight * g).abs().detach()
    assert mask.sum() == 64 and score[~mask].max() <= score[mask].min()
    assert mask[0][score[0] > 0].all()  # every weight with a nonzero score survives (only 25 of them)
    with Pruning(
        "layers.1.0", amount=0.5, importance=InputXGradient(target), structured=True, data=td
    ).prepare(mlp) as h:
        unit = h.state.masks["layers.1.0"].all(1)
    with torch.no_grad():  # manual unit importance: mean |activation * gradient| of each output unit
        a = mlp.layers[1][0](mlp.layers[0](td["input"])).detach().requires_grad_(True)
        t = mlp.head(mlp.layers[2](torch.relu(a)))[:, 0].sum()
    with torch.enable_grad():
        a = mlp.layers[1][0](mlp.layers[0](td["input"])).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(mlp.head(mlp.layers[2](torch.relu(a)))[:, 0].sum(), a)
    score = (a * g).abs().mean(0)
    assert torch.equal(unit, score > score.median()) or (unit == (score >= score.sort().values[16])).all()
    del t


def test_pruning_lifecycle_and_errors(mlp, td):
    check_lifecycle(Pruning(amount=0.9), mlp, td)
    before = snapshot(mlp)
    with pytest.raises(Boom):
        with Pruning(amount=0.5, structured=True).prepare(mlp) as hooked:
            hooked(td.clone())
            raise Boom
    assert_unchanged(mlp, before)
    with pytest.raises(ValueError, match="grad_x_weight"):
        Pruning(importance="grad_x_weight")
    with pytest.raises(ValueError, match="structured"):
        Pruning(importance=InputXGradient("output"), data=td)
    with pytest.raises(ValueError, match="fraction"):
        Pruning(amount=1.5)


# -- task vectors ------------------------------------------------------------------------------------------------
def test_task_vector_arithmetic_and_application(mlp, td):
    torch.manual_seed(3)
    base = {k: v.clone() for k, v in mlp.state_dict().items()}
    tuned = {k: v + 0.1 * torch.randn_like(v) for k, v in base.items()}
    other = {k: v + 0.1 * torch.randn_like(v) for k, v in base.items()}
    tv, tv2 = TaskVector(base, tuned), TaskVector(base, other)
    before = snapshot(mlp)
    combo = 0.5 * tv - tv2
    with torch.no_grad(), combo.prepare(mlp) as hooked:
        out = hooked(td.clone())["output"]
        ref_model = MLP()
        ref_model.load_state_dict(
            {k: base[k] + 0.5 * (tuned[k] - base[k]) - (other[k] - base[k]) for k in base}
        )
        torch.testing.assert_close(out, ref_model(td["input"]))
    assert_unchanged(mlp, before)
    applied = TaskVector(base, tuned).apply_to(base)
    for k in base:
        torch.testing.assert_close(applied[k], tuned[k])
    check_lifecycle(tv, mlp, td)
    with pytest.raises(KeyError, match="lacks"):
        with TaskVector({"nope": torch.zeros(1)}, {"nope": torch.ones(1)}).prepare(mlp):
            pass
    assert_unchanged(mlp, before)
