"""ResNetCanonizer: zennit's values on a residual net, conservation, structure recognition, restoration."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torch import nn

import rlhook
from agents.vision.net import BasicBlock, Bottleneck
from rlhook.adapters.vision import ResNetCanonizer, residual_blocks
from rlhook.attribution.lrp import LRP, Composite, Epsilon, Norm, Sum

FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location(
    "make_zennit_resnet", FIXTURES / "make_zennit_resnet_fixtures.py"
)
zr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zr)
DATA = torch.load(FIXTURES / "zennit_resnet.pt", weights_only=True)
COMPOSITES = {
    "epsilon": lambda: Composite(rule=Epsilon(1e-6)),
    "epsilon_plus": Composite.epsilon_plus,
    "epsilon_alpha2_beta1": Composite.epsilon_alpha2_beta1,
}


def _net() -> nn.Module:
    model = zr.tiny_resnet(BasicBlock, Bottleneck).double().eval()
    model.load_state_dict(DATA["state_dict"])  # strict: the torch-only blocks are laid out as torchvision's
    return model


def _lrp(model, x, composite, canonizers=None, **kw) -> TensorDict:
    canonizers = [ResNetCanonizer()] if canonizers is None else canonizers
    method = LRP(lambda out: out["output"][..., zr.TARGET], composite=composite, canonizers=canonizers, **kw)
    with method.prepare(model) as hooked:
        return hooked(TensorDict({"input": x}, batch_size=x.shape[:1]))


def _snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}


def test_blocks_recognised_by_structure():
    kinds = [(n, k) for n, _, k in residual_blocks(_net())]
    assert kinds == [
        ("layer1.0", "basic"),
        ("layer1.1", "basic"),
        ("layer2.0", "bottleneck"),
        ("layer2.1", "bottleneck"),
        ("layer3.0", "bottleneck"),
    ]


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_matches_zennit_resnet_canonizer(name):
    model = _net()
    torch.testing.assert_close(model(DATA["input"]), DATA["logits"])
    ours = _lrp(model, DATA["input"], COMPOSITES[name]())["attr", "input"]
    torch.testing.assert_close(ours, DATA["relevance"][name], rtol=1e-6, atol=1e-9 * float(ours.abs().max()))


def test_without_canonizer_differs_from_zennit():
    """The comparison has teeth: plain LRP (BN passed, additions as gradients) gives another map."""
    model = _net()
    ours = _lrp(model, DATA["input"], Composite(rule=Epsilon(1e-6)), canonizers=())["attr", "input"]
    assert not torch.allclose(ours, DATA["relevance"]["epsilon"], rtol=1e-2, atol=1e-3)


def _bias_free(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
            if isinstance(m, nn.Linear):
                m.bias.zero_()
    return model


def test_conserves_relevance_on_a_bias_free_resnet():
    model = _bias_free(_net())
    x = DATA["input"]
    exact = Composite([((Sum, nn.AdaptiveAvgPool2d), Norm(1e-12))], rule=Epsilon(1e-12))
    td = _lrp(model, x, exact, conservation=1e-8)
    logit = model(x)[:, zr.TARGET]
    torch.testing.assert_close(td["attr", "input"].flatten(1).sum(1), logit, rtol=1e-8, atol=1e-12)
    plain = _lrp(model, x, exact, canonizers=())["attr", "input"]
    assert not torch.allclose(plain.flatten(1).sum(1), logit, rtol=1e-2)  # the residual add doubles relevance


def test_model_restored_after_success_and_error():
    model = _net()
    before, fwd = _snapshot(model), [("forward" in m.__dict__) for m in model.modules()]
    n_modules = len(list(model.modules()))
    _lrp(model, DATA["input"], Composite.epsilon_plus())
    with pytest.raises(RuntimeError, match="boom"):
        with LRP(lambda out: out["output"][..., 0], canonizers=[ResNetCanonizer()]).prepare(model) as hooked:
            assert len(list(model.modules())) > n_modules  # the Sum children exist inside the block
            hooked(TensorDict({"input": DATA["input"]}, batch_size=[3]))
            raise RuntimeError("boom")
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()
    assert [("forward" in m.__dict__) for m in model.modules()] == fwd
    assert len(list(model.modules())) == n_modules and rlhook.hook_count(model) == 0
    torch.testing.assert_close(model(DATA["input"]), DATA["logits"])


def test_output_unchanged_inside_prepare():
    model = _net()
    with LRP(lambda out: out["output"][..., 0], canonizers=[ResNetCanonizer()]).prepare(model):
        torch.testing.assert_close(model(DATA["input"]), DATA["logits"], rtol=1e-10, atol=1e-10)


class _Scaled(BasicBlock):
    """A block with a basic block's children that computes something else (a scaled residual)."""

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + 0.5 * x)


def test_a_look_alike_block_is_an_error():
    model = nn.Sequential(_Scaled(4, 4), nn.Flatten(), nn.LazyLinear(2)).eval()
    model(torch.randn(1, 4, 6, 6))
    with pytest.raises(ValueError, match="computes something else.*Residual"):
        with LRP(lambda out: out["output"][..., 0], canonizers=[ResNetCanonizer()]).prepare(model):
            pass
    assert rlhook.hook_count(model) == 0 and "residual_sum" not in model[0]._modules
