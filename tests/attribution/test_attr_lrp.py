"""LRP: each rule against its closed-form matrix version (weights recovered from the layer's Jacobian),
LRP-epsilon = Input x Gradient on ReLU nets, conservation with zero biases, captum's LRP, composites by
name, batch-norm merging (function kept, model restored bitwise) and residual additions."""

from __future__ import annotations

import copy

import captum.attr as ca
import pytest
import torch
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule
from tensordict import TensorDict
from torch import nn

import rlhook
from rlhook.attribution import InputXGradient
from rlhook.attribution.lrp import (
    LRP,
    AlphaBeta,
    Composite,
    Epsilon,
    Flat,
    Gamma,
    MergeBatchNorm,
    Norm,
    Pass,
    Residual,
    Sum,
    WSquare,
    ZPlus,
)
from rlhook.attribution.lrp.composite import POOLING
from tests.models import CNN, MLP

DT = torch.float64
EPS = 1e-6


def _stab(z: torch.Tensor) -> torch.Tensor:
    return z + EPS * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _affine(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of an affine layer at one example ``x``: W = Jacobian (out, in), b = f(0)."""
    f = lambda v: layer(v.reshape(1, *x.shape)).reshape(-1)  # noqa: E731
    W = torch.autograd.functional.jacobian(f, x.reshape(-1), vectorize=True)
    return W.detach(), f(torch.zeros_like(x).reshape(-1)).detach()


def _reference(rule: str, layer: nn.Module, x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Closed-form relevance of one example: x (in shape), R (out, flat) -> R_in (in shape)."""
    W, b = _affine(layer, x)
    xf = x.reshape(-1)
    c = W * xf[None, :]  # contributions (out, in)
    if rule == "epsilon":
        r = (c * (R / _stab(c.sum(1) + b))[:, None]).sum(0)
    elif rule == "gamma":
        g = 0.25
        cp, cn = c + g * c.clamp(min=0), c + g * c.clamp(max=0)
        zp, zn = cp.sum(1) + b + g * b.clamp(min=0), cn.sum(1) + b + g * b.clamp(max=0)
        z = c.sum(1) + b
        r = (cp * (R * (z > 0) / _stab(zp))[:, None] + cn * (R * (z < 0) / _stab(zn))[:, None]).sum(0)
    elif rule in ("zplus", "alpha2beta1"):
        a, be = (1.0, 0.0) if rule == "zplus" else (2.0, 1.0)
        cp, cn = c.clamp(min=0), c.clamp(max=0)
        zp, zn = cp.sum(1) + b.clamp(min=0), cn.sum(1) + b.clamp(max=0)
        r = (a * cp * (R / _stab(zp))[:, None] - be * cn * (R / _stab(zn))[:, None]).sum(0)
    elif rule == "flat":
        ones = copy.deepcopy(layer)
        with torch.no_grad():
            ones.weight.fill_(1.0)
        M, _ = _affine(ones, x)
        M = M - 0  # connectivity (bias does not enter the Jacobian)
        r = (M * (R / _stab(M.sum(1)))[:, None]).sum(0)
    elif rule == "wsquare":
        W2 = W * W
        r = (W2 * (R / _stab(W2.sum(1)))[:, None]).sum(0)
    return r.reshape(x.shape)


RULES = {
    "epsilon": Epsilon,
    "gamma": lambda: Gamma(0.25),
    "zplus": ZPlus,
    "alpha2beta1": lambda: AlphaBeta(2.0, 1.0),
    "flat": Flat,
    "wsquare": WSquare,
}
LAYERS = {
    "linear": (lambda: nn.Linear(5, 4), (5,)),
    "conv": (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 4, 4)),
}


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule", list(RULES))
def test_rule_matches_closed_form(rule: str, layer_name: str) -> None:
    torch.manual_seed(7)
    make, shape = LAYERS[layer_name]
    layer = make().to(DT)
    x = torch.randn(3, *shape, dtype=DT)
    r = torch.randn(layer(x[:1]).numel(), dtype=DT)  # the output relevance direction
    target = lambda out: (out["output"].flatten(1) * r).sum(-1)  # noqa: E731
    with LRP(target, composite=Composite([(type(layer), RULES[rule]())])).prepare(layer) as hooked:
        out = hooked(TensorDict({"input": x}, [3]))
    for i in range(3):
        # relevance starts at the outputs as output * d target / d output = y * r (it sums to the target)
        expected = _reference(rule, layer, x[i], (layer(x[i : i + 1]).flatten() * r).detach())
        torch.testing.assert_close(out["attr", "input"][i], expected, rtol=1e-9, atol=1e-11)


def test_composite_by_name_composes_the_rules() -> None:
    """Flat on layer "0" by name, Gamma on Linear by type: the two-layer closed form."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).to(DT)
    x = torch.randn(2, 5, dtype=DT)
    composite = Composite([(nn.Linear, Gamma(0.25))], names={"0": Flat()})
    with LRP(lambda o: o["output"][..., 0], composite=composite).prepare(model) as hooked:
        out = hooked(TensorDict({"input": x}, [2]))
    for i in range(2):
        h = torch.relu(model[0](x[i : i + 1]))[0].detach()
        f = model(x[i : i + 1])[0, 0].detach()
        r_top = torch.tensor([f, 0.0, 0.0], dtype=DT)
        r_hidden = _reference("gamma", model[2], h, r_top)
        expected = _reference("flat", model[0], x[i], r_hidden)
        torch.testing.assert_close(out["attr", "input"][i], expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_lrp_epsilon_equals_input_x_gradient_on_relu_nets(model_name: str) -> None:
    torch.manual_seed(9)
    model = MLP().to(DT) if model_name == "mlp" else CNN().to(DT)
    x = torch.randn(4, 16, dtype=DT) if model_name == "mlp" else torch.randn(4, 3, 8, 8, dtype=DT)
    td = TensorDict({"input": x}, [4])
    target = lambda o: o["output"][..., 1]  # noqa: E731
    composite = Composite([(POOLING, Norm(1e-12))], rule=Epsilon(1e-12))
    with LRP(target, composite=composite).prepare(model) as hooked:
        lrp = hooked(td.clone())["attr", "input"]
    with InputXGradient(target).prepare(model) as hooked:
        ixg = hooked(td.clone())["attr", "input"]
    torch.testing.assert_close(lrp, ixg, rtol=1e-6, atol=1e-9)


def _zero_bias(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                m.bias.zero_()
    return model


TINY = {
    "epsilon": lambda: Epsilon(1e-12),
    "gamma": lambda: Gamma(0.25, eps=1e-12),
    "zplus": lambda: ZPlus(1e-12),
    "alpha2beta1": lambda: AlphaBeta(2.0, 1.0, eps=1e-12),
    "flat": lambda: Flat(1e-12),
    "wsquare": lambda: WSquare(1e-12),
}


@pytest.mark.parametrize("rule", list(TINY))
def test_conservation_with_zero_biases(rule: str) -> None:
    torch.manual_seed(10)
    model = _zero_bias(MLP().to(DT))
    x = torch.randn(6, 16, dtype=DT)
    labels = model(x).argmax(-1)
    td = TensorDict({"input": x, "labels": labels}, [6])
    target = lambda o: o["output"].gather(-1, o["labels"][:, None]).squeeze(-1)  # noqa: E731
    with LRP(target, composite=Composite(rule=TINY[rule]()), conservation=1e-8).prepare(model) as hooked:
        out = hooked(td)
    f = model(x).gather(-1, labels[:, None]).squeeze(-1).detach()
    torch.testing.assert_close(out["attr", "input"].sum(-1), f, rtol=1e-8, atol=1e-10)
    assert out["attr_delta"].abs().max() < 1e-8 * f.abs().max()


def test_conservation_fails_with_biases() -> None:
    """The delta is not always zero: with biases LRP-epsilon loses relevance to them (the check has teeth)."""
    torch.manual_seed(10)
    model = MLP().to(DT)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.bias.fill_(0.5)
    x = torch.randn(6, 16, dtype=DT)
    with LRP(lambda o: o["output"][..., 0]).prepare(model) as hooked:
        out = hooked(TensorDict({"input": x}, [6]))
    assert out["attr_delta"].abs().max() > 1e-2
    with pytest.raises(ValueError, match="relevance is not conserved"):
        with LRP(lambda o: o["output"][..., 0], conservation=1e-3).prepare(model) as hooked:
            hooked(TensorDict({"input": x}, [6]))
    assert rlhook.hook_count(model) == 0


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda: Epsilon(1e-9), lambda: EpsilonRule(1e-9)),
        (lambda: Gamma(0.25, eps=1e-9), lambda: GammaRule(0.25)),
        (lambda: ZPlus(1e-9), Alpha1_Beta0_Rule),
    ],
    ids=["epsilon", "gamma", "zplus"],
)
def test_matches_captum_lrp(ours, theirs) -> None:
    """captum's gamma and z+ ignore the sign split of inputs and keep biases as they are: they agree with ours
    on non-negative inputs, zero biases and positive target logits."""
    torch.manual_seed(11)
    model = _zero_bias(MLP().to(DT))
    x = torch.randn(5, 16, dtype=DT).abs()
    labels = model(x).argmax(-1)
    assert (model(x).gather(-1, labels[:, None]) > 0).all()
    td = TensorDict({"input": x, "labels": labels}, [5])
    target = lambda o: o["output"].gather(-1, o["labels"][:, None]).squeeze(-1)  # noqa: E731
    with LRP(target, composite=Composite(rule=ours())).prepare(model) as hooked:
        got = hooked(td)["attr", "input"]
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.Linear):
            m.rule = theirs()
    ref = ca.LRP(twin).attribute(x, target=labels.tolist())
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-10)


def _bn_model(bias: bool = True) -> nn.Module:
    torch.manual_seed(12)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=bias),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16, 6, bias=bias),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 3),
    ).to(DT)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_merge_batchnorm_keeps_the_function_and_restores_bitwise(bias: bool) -> None:
    model = _bn_model(bias)
    model.train()  # merging uses eval statistics and puts the batch norms in eval inside the block
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 2, 4, 4, dtype=DT)
    model.eval()
    before = model(x).detach()
    model.train()
    with LRP(lambda o: o["output"][..., 0], canonizers=[MergeBatchNorm()]).prepare(model) as hooked:
        model.eval()  # the classifier head has no batch norm merged; compare the eval function
        inside = model(x).detach()
        assert model[0].weight is not None and not torch.equal(model[0].weight, state["0.weight"])
        hooked(TensorDict({"input": x}, [4]))
        model.train()
    torch.testing.assert_close(inside, before, rtol=1e-12, atol=1e-12)
    assert model.training and model[1].training
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert (model[0].bias is None) == (not bias)
    assert rlhook.hook_count(model) == 0


def test_merge_batchnorm_restores_after_an_exception() -> None:
    model = _bn_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with LRP(boom, canonizers=[MergeBatchNorm()]).prepare(model) as hooked:
            hooked(TensorDict({"input": torch.randn(2, 2, 4, 4, dtype=DT)}, [2]))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert rlhook.hook_count(model) == 0


class Block(nn.Module):
    def __init__(self, use_sum: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.sum = Sum() if use_sum else None

    def forward(self, x):
        return self.sum(x, self.body(x)) if self.sum is not None else x + self.body(x)


def _res_model(use_sum: bool) -> nn.Module:
    torch.manual_seed(13)
    return _zero_bias(nn.Sequential(nn.Linear(6, 8), Block(use_sum), nn.ReLU(), nn.Linear(8, 3)).to(DT))


def test_residual_additions_conserve_relevance() -> None:
    x = torch.randn(5, 6, dtype=DT)
    target = lambda o: o["output"][..., 0]  # noqa: E731
    plain = _res_model(False)
    with LRP(target).prepare(plain) as hooked:
        naive = hooked(TensorDict({"input": x}, [5]))
    f = plain(x)[:, 0].detach()
    assert (naive["attr_delta"].abs() > 1e-3 * f.abs()).any()  # the skip path counts relevance twice
    tiny = Composite([(Sum, Norm(1e-12))], names={"1": Residual("body", eps=1e-12)}, rule=Epsilon(1e-12))
    with LRP(target, composite=tiny).prepare(plain) as hooked:
        res = hooked(TensorDict({"input": x}, [5]))
    torch.testing.assert_close(res["attr", "input"].sum(-1), f, rtol=1e-6, atol=1e-9)
    summed = _res_model(True)
    with LRP(target, composite=tiny).prepare(summed) as hooked:
        via_sum = hooked(TensorDict({"input": x}, [5]))
    torch.testing.assert_close(res["attr", "input"], via_sum["attr", "input"], rtol=1e-9, atol=1e-12)
    assert rlhook.hook_count(plain) == 0 and rlhook.hook_count(summed) == 0


class SplitBlock(nn.Module):
    """The same block with its branch written as three sibling modules (as lc0's conv1 -> conv2 -> se)."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.first, self.act, self.second = block.body

    def forward(self, x):
        return x + self.second(self.act(self.first(x)))


def test_residual_branch_given_as_a_sequence_of_modules() -> None:
    x = torch.randn(5, 6, dtype=DT)
    target = lambda o: o["output"][..., 1]  # noqa: E731
    whole = _res_model(False)
    split = _res_model(False)
    split[1] = SplitBlock(split[1])
    rule = dict(rule=Epsilon(1e-12))
    ref = Composite(names={"1": Residual("body", eps=1e-12)}, **rule)
    seq = Composite(names={"1": Residual(["first", "act", "second"], eps=1e-12)}, **rule)
    with LRP(target, composite=ref).prepare(whole) as hooked:
        a = hooked(TensorDict({"input": x}, [5]))["attr", "input"]
    with LRP(target, composite=seq).prepare(split) as hooked:
        b = hooked(TensorDict({"input": x}, [5]))["attr", "input"]
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(b.sum(-1), split(x)[:, 1].detach(), rtol=1e-6, atol=1e-9)
    assert rlhook.hook_count(split) == 0


def test_layer_relevance_and_errors() -> None:
    torch.manual_seed(14)
    model = _zero_bias(MLP().to(DT))
    x = torch.randn(3, 16, dtype=DT)
    method = LRP(lambda o: o["output"][..., 0], layers="layers.1", composite=Composite(rule=Epsilon(1e-12)))
    with method.prepare(model) as hooked:
        out = hooked(TensorDict({"input": x}, [3]))
    f = model(x)[:, 0].detach()
    torch.testing.assert_close(out["attr", "layers.1"].sum(-1), f, rtol=1e-8, atol=1e-10)
    with pytest.raises(TypeError, match="needs a module with a `weight`"):
        with LRP("output", composite=Composite([(nn.ReLU, Gamma())])).prepare(model) as hooked:
            hooked(TensorDict({"input": x}, [3]))
    with pytest.raises(ValueError, match="Pass needs one input shaped like the output"):
        with LRP("output", composite=Composite([(nn.Linear, Pass())])).prepare(model) as hooked:
            hooked(TensorDict({"input": x}, [3]))
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 2.0)
    assert rlhook.hook_count(model) == 0
