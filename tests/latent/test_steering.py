"""Steering: contrast vectors against explicit means, additions against a hand-written forward."""

from __future__ import annotations

import pickle

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rlhook import hook_count
from rlhook.latent import ActivationAddition, SteeringVectors, vectors_from
from tests.latent.helpers import check_lifecycle
from tests.models import MLP


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MLP()


def acts(model, x):
    out, h = [], x
    for layer in model.layers:
        h = layer(h)
        out.append(h)
    return out


def test_activation_addition_matches_means(model):
    torch.manual_seed(1)
    pos, neg = torch.randn(9, 16) + 1.0, torch.randn(9, 16) - 1.0
    td = TensorDict(
        {"input": torch.randn(9, 16), ("positive", "input"): pos, ("negative", "input"): neg}, [9]
    )
    with torch.no_grad(), ActivationAddition(["layers.0", "layers.2"]).prepare(model) as hooked:
        out = hooked(td.clone())
        ref_p, ref_n = acts(model, pos), acts(model, neg)
    for i, name in ((0, "layers.0"), (2, "layers.2")):
        v = ref_p[i].mean(0) - ref_n[i].mean(0)
        torch.testing.assert_close(hooked.state.vectors[name], v)
        torch.testing.assert_close(out["steer", name][4], v)
        torch.testing.assert_close(vectors_from(out)[name], v)


def test_steering_linear_in_the_last_layer(model):
    """Adding a*v after the last block moves the output by exactly a * W_head v."""
    torch.manual_seed(2)
    x = torch.randn(5, 16)
    td = TensorDict({"input": x}, [5])
    v = torch.randn(32)
    with torch.no_grad():
        base = model(x)
        for a in (0.0, 0.5, -2.0):
            with SteeringVectors({"layers.2": v}, scale=a).prepare(model) as hooked:
                out = hooked(td.clone())["output"]
            torch.testing.assert_close(out, base + a * (model.head.weight @ v), atol=1e-5, rtol=1e-5)


def test_callable_positions_and_live_scale():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(3, 5, 4)
    td = TensorDict({"input": x}, [3])
    fn = lambda h: h.flip(-1)
    with torch.no_grad():
        with SteeringVectors({"1": fn}, scale=0.3, positions=[1, 4]).prepare(model) as hooked:
            out = hooked(td.clone())["output"]
            hooked.method.state.set_scale(0.0)
            zero = hooked(td.clone())["output"]
        h = torch.tanh(model[0](x))
        h2 = h.clone()
        h2[:, [1, 4]] += 0.3 * h[:, [1, 4]].flip(-1)
        torch.testing.assert_close(out, model[2](h2))
        torch.testing.assert_close(zero, model(x))


def test_state_is_buffers_and_hooks_pickle(model):
    v = torch.randn(32)
    steer = SteeringVectors({"layers.1": v}, scale=2.0)
    assert torch.equal(dict(steer.state.named_buffers())["vector_0"], v)
    with steer.prepare(model):
        clone = pickle.loads(pickle.dumps(model))  # the hooks travel with the model (collector workers)
        x = torch.randn(2, 16)
        torch.testing.assert_close(clone(x), model(x))
    assert hook_count(model) == 0


def test_lifecycle_and_errors(model):
    td = TensorDict(
        {
            "input": torch.randn(4, 16),
            ("positive", "input"): torch.randn(4, 16),
            ("negative", "input"): torch.randn(4, 16),
        },
        [4],
    )
    check_lifecycle(ActivationAddition("layers.0"), model, td)
    check_lifecycle(SteeringVectors({"layers.0": torch.ones(32)}), model, td)
    with pytest.raises(ValueError, match="broadcast"):
        with SteeringVectors({"layers.0": torch.ones(7)}).prepare(model) as hooked:
            hooked(td.clone())
    assert hook_count(model) == 0
    with pytest.raises(KeyError, match="positive"):
        with ActivationAddition("layers.0").prepare(model) as hooked:
            hooked(TensorDict({"input": torch.randn(2, 16)}, [2]))
