"""Faithfulness metrics on closed-form cases and against explicit loops."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rlhook import hook_count
from rlhook.attribution import InputXGradient, IntegratedGradients, Saliency
from rlhook.metrics import (
    completeness,
    deletion_curve,
    infidelity,
    insertion_curve,
    masked_behaviour,
    max_sensitivity,
)
from tests.models import MLP, two_input_td, two_input_td_module


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return nn.Linear(8, 1)


def td_for(x, b=None):
    td = TensorDict({"input": x}, [len(x)])
    if b is not None:
        td["baseline", "input"] = b
    return td


def test_completeness_ig_and_saliency(linear):
    torch.manual_seed(1)
    model = MLP(n_in=8, width=16, n_out=3)
    x = torch.randn(5, 8)
    td = td_for(x, torch.randn(5, 8) * 0.1)
    target = lambda out: out["output"][..., 1]
    with IntegratedGradients(target, n_steps=64).prepare(model) as h:
        out = h(td.clone())
    delta = completeness(model, out, target)
    assert delta.abs().max() < 1e-3
    torch.testing.assert_close(out["metrics", "completeness"], delta)
    with Saliency(target, abs=False).prepare(model) as h:
        sal = h(td.clone())
    manual = sal["attr", "input"].sum(-1) - (model(x)[:, 1] - model(td["baseline", "input"])[:, 1])
    torch.testing.assert_close(completeness(model, sal, target), manual.detach())
    assert hook_count(model) == 0


def test_infidelity_zero_for_ig_on_linear_and_matches_loop(linear):
    torch.manual_seed(2)
    x = torch.randn(6, 8)
    td = td_for(x, torch.randn(6, 8))
    with IntegratedGradients("output", n_steps=4).prepare(linear) as h:
        out = h(td.clone())
    for pert in ("bernoulli", "gaussian"):
        assert infidelity(linear, out, "output", perturbation=pert, n_samples=20).max() < 1e-10
    # gradient-type attributions with additive noise: also exact on a linear model
    with Saliency("output", abs=False).prepare(linear) as h:
        sal = h(td.clone())
    assert infidelity(linear, sal, "output", multiply_by_inputs=False).max() < 1e-10
    # a wrong attribution is not faithful; value against an explicit loop with the same draws
    wrong = out.clone()
    wrong["attr", "input"] = torch.randn(6, 8)
    got = infidelity(linear, wrong, "output", seed=3, n_samples=5)
    gen = torch.Generator().manual_seed(3)
    pert = torch.bernoulli(torch.full((5, 6, 8), 0.5), generator=gen)
    ref = torch.zeros(6)
    with torch.no_grad():
        for s in range(5):
            xp = x - pert[s] * (x - td["baseline", "input"])
            pred = (pert[s] * wrong["attr", "input"]).sum(-1)
            ref += (pred - (linear(x) - linear(xp))[:, 0]) ** 2
    torch.testing.assert_close(got, ref / 5)
    assert got.min() > 1e-3
    assert infidelity(linear, wrong, "output", chunk_size=3) == pytest.approx(
        infidelity(linear, wrong, "output")
    )


def test_infidelity_normalize_is_scale_free(linear):
    x = torch.randn(4, 8)
    td = td_for(x)
    with IntegratedGradients("output", n_steps=4).prepare(linear) as h:
        out = h(td.clone())
    out["attr", "input"] = out["attr", "input"] * 3.0
    assert infidelity(linear, out, "output").min() > 1e-3
    assert infidelity(linear, out, "output", normalize=True).max() < 1e-8


def test_max_sensitivity(linear):
    torch.manual_seed(4)
    x = torch.randn(5, 8)
    td = td_for(x)
    with Saliency("output", abs=False).prepare(linear) as h:
        assert max_sensitivity(h, td.clone()).max() < 1e-6  # constant gradient
    model = MLP(n_in=8, width=16, n_out=1)
    with InputXGradient("output").prepare(model) as h:
        s = max_sensitivity(h, td.clone(), radius=0.1)
        small = max_sensitivity(h, td.clone(), radius=0.001)
    assert (s > 0).all() and (small <= s + 1e-6).all()


def test_deletion_and_insertion_curves(linear):
    torch.manual_seed(5)
    with torch.no_grad():
        linear.weight.copy_(torch.linspace(0.1, 2.0, 8)[None])
        linear.bias.zero_()
    x = torch.rand(3, 8) + 0.5  # positive inputs: every contribution positive
    td = td_for(x)
    with IntegratedGradients("output", n_steps=4).prepare(linear) as h:
        out = h(td.clone())
    fr, curve, auc = deletion_curve(linear, out, "output", n_steps=8)
    assert fr.shape == (9,) and curve.shape == (3, 9)
    torch.testing.assert_close(curve[:, 0], linear(x)[:, 0].detach())
    assert curve[:, -1].abs().max() < 1e-6  # everything at the zero baseline
    assert (curve[:, 1:] <= curve[:, :-1] + 1e-6).all()  # monotone for positive contributions
    _, _, auc_rand = deletion_curve(linear, out.clone(), "output", n_steps=8, order="random")
    rev = out.clone()
    rev["attr", "input"] = -out["attr", "input"]
    _, _, auc_rev = deletion_curve(linear, rev, "output", n_steps=8)
    assert (auc < auc_rand).all() and (auc_rand < auc_rev).all()
    _, icurve, iauc = insertion_curve(linear, out, "output", n_steps=8)
    _, _, iauc_rev = insertion_curve(linear, rev, "output", n_steps=8)
    assert (iauc > iauc_rev).all()
    torch.testing.assert_close(icurve[:, -1], linear(x)[:, 0].detach())
    # explicit reference for one step: remove the top 2 of 8 features (fraction 0.25)
    top = out["attr", "input"].argsort(-1, descending=True)[:, :2]
    xm = x.clone().scatter_(1, top, 0.0)
    torch.testing.assert_close(curve[:, 2], linear(xm)[:, 0].detach())
    torch.testing.assert_close(auc, torch.trapezoid(curve, fr.float(), dim=-1))
    _, chunked, _ = deletion_curve(linear, out, "output", n_steps=8, chunk_size=2)
    torch.testing.assert_close(chunked, curve)


def test_multi_input_td_module_behaviour():
    module = two_input_td_module()
    torch.manual_seed(6)
    td = two_input_td((4,))
    with InputXGradient("state_value").prepare(module) as h:
        out = h(td.clone())
    res = masked_behaviour(module, out, action="logits", value="state_value", fractions=(0.0, 0.5, 1.0))
    agree, change = res["action_agreement"], res["value_change"]
    assert agree.shape == (4, 3) and change.shape == (4, 3)
    assert (agree[:, 0] == 1).all() and change[:, 0].abs().max() < 1e-6
    inner = module.module
    with torch.no_grad():  # everything masked to zero baselines
        zero = inner(torch.zeros(4, 6), torch.zeros(4, 3))
        clean = inner(td["obs"], td["goal"])
    torch.testing.assert_close(change[:, 2], (zero[1] - clean[1])[:, 0])
    torch.testing.assert_close(agree[:, 2], (zero[0].argmax(-1) == clean[0].argmax(-1)).float())
    # deletion over two inputs ranks features of both jointly
    _, curve, _ = deletion_curve(module, out, "state_value", n_steps=9)
    assert curve.shape == (4, 10)
    torch.testing.assert_close(curve[:, -1], zero[1][:, 0])


def test_errors(linear):
    td = td_for(torch.randn(3, 8))
    with pytest.raises(KeyError, match="attribution"):
        completeness(linear, td, "output")
    with IntegratedGradients("output", n_steps=2).prepare(linear) as h:
        out = h(td.clone())
    many = lambda o: TensorDict({"a": o["output"][..., 0], "b": o["output"][..., 0]}, o.batch_size)
    with pytest.raises(ValueError, match="one target"):
        completeness(linear, out, many)
    with pytest.raises(ValueError, match="action"):
        masked_behaviour(linear, out, action=None)


def test_infidelity_takes_a_perturbation_per_input():
    """One perturbation per input: a zero perturbation on ``goal`` gives the infidelity of ``obs`` alone."""
    module = two_input_td_module().double()
    torch.manual_seed(7)
    td = two_input_td((4,), dtype=torch.float64)
    with InputXGradient("state_value").prepare(module) as h:
        out = h(td.clone())
    noise = lambda x, gen: 0.3 * torch.randn(x.shape, generator=gen, dtype=x.dtype)  # noqa: E731
    still = lambda x, gen: torch.zeros_like(x)  # noqa: E731
    both = infidelity(module, out, "state_value", perturbation={"obs": noise, "goal": still}, seed=2)
    alone = infidelity(module, out, "state_value", inputs=["obs"], perturbation=noise, seed=2)
    torch.testing.assert_close(both, alone, rtol=1e-12, atol=1e-14)
    same = infidelity(module, out, "state_value", perturbation={"obs": noise, "goal": noise}, seed=2)
    torch.testing.assert_close(same, infidelity(module, out, "state_value", perturbation=noise, seed=2))
    with pytest.raises(KeyError, match="goal"):
        infidelity(module, out, "state_value", perturbation={"obs": noise})
