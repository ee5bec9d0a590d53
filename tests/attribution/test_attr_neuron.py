"""Neuron targets (a unit of an internal module's output) against captum's Neuron* methods, several units in
one call, and the errors users see."""

from __future__ import annotations

import captum.attr as ca
import pytest
import torch
from tensordict import TensorDict

from rlhook.attribution import (
    DeepLift,
    FeatureAblation,
    GuidedBackprop,
    IntegratedGradients,
    Neuron,
    NeuronConductance,
    Saliency,
    ShapleyValueSampling,
)
from tests.models import CNN, MLP

DT = torch.float64
MODELS = {
    "mlp": (MLP, (16,), "layers.1", 3),
    "cnn": (CNN, (3, 8, 8), "conv2", (1, 2, 3)),
}


def _setup(name: str, batch: int = 4):
    make, shape, layer, unit = MODELS[name]
    torch.manual_seed(5)
    m = make().to(DT)
    x = torch.randn(batch, *shape, dtype=DT)
    return m, x, layer, unit


def _ours(method, m, x) -> torch.Tensor:
    with method.prepare(m) as hooked:
        return hooked(TensorDict({"input": x}, [x.shape[0]]))["attr", "input"]


def _mask(shape: tuple) -> torch.Tensor:
    return (
        torch.arange(shape[-1])
        if len(shape) == 1
        else torch.arange(12).reshape(3, 2, 2).repeat_interleave(4, 1).repeat_interleave(4, 2)
    )


ROWS = {
    "gradient": (
        lambda t, s: Saliency(t, abs=False),
        lambda m, lay, x, u, s: ca.NeuronGradient(m, lay).attribute(x, u),
    ),
    "ig": (
        lambda t, s: IntegratedGradients(t, n_steps=8, delta=False),
        lambda m, lay, x, u, s: ca.NeuronIntegratedGradients(m, lay).attribute(x, u, n_steps=8),
    ),
    "guided": (
        lambda t, s: GuidedBackprop(t),
        lambda m, lay, x, u, s: ca.NeuronGuidedBackprop(m, lay).attribute(x, u),
    ),
    "deeplift": (lambda t, s: DeepLift(t), lambda m, lay, x, u, s: ca.NeuronDeepLift(m, lay).attribute(x, u)),
    "feature_ablation": (
        lambda t, s: FeatureAblation(t, feature_mask=_mask(s)),
        lambda m, lay, x, u, s: ca.NeuronFeatureAblation(m, lay).attribute(x, u, feature_mask=_mask(s)[None]),
    ),
}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("row", list(ROWS))
def test_neuron_target_agrees_with_captum(row: str, model: str) -> None:
    m, x, layer, unit = _setup(model)
    ours, theirs = ROWS[row]
    got = _ours(ours(Neuron(layer, unit), x.shape[1:]), m, x)
    ref = theirs(m, m.get_submodule(layer), x, unit, x.shape[1:])
    tol = 1e-7 if row == "ig" else 1e-10  # captum casts the IG quadrature weights to float32
    torch.testing.assert_close(got, ref.to(DT), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "make", [lambda t: Saliency(t, abs=False), lambda t: ShapleyValueSampling(t, n_samples=2)]
)
def test_several_units_in_one_call_equal_separate_runs(make) -> None:
    m, x, layer, _ = _setup("mlp", 3)
    with make(Neuron(layer, [3, 7])).prepare(m) as hooked:
        maps = hooked(TensorDict({"input": x}, [3]))["attr"]
    for u in (3, 7):
        torch.testing.assert_close(maps[str(u), "input"], _ours(make(Neuron(layer, u)), m, x), rtol=0, atol=0)


def test_neuron_errors_name_the_problem() -> None:
    m, x, layer, _ = _setup("mlp", 2)
    with pytest.raises(IndexError, match="unit 99 of 'layers.1'"):
        _ours(Saliency(Neuron(layer, 99)), m, x)
    with pytest.raises(IndexError, match="2 indices for 1 dims"):
        _ours(Saliency(Neuron(layer, (0, 1))), m, x)
    with pytest.raises(TypeError, match="int or a tuple"):
        Neuron(layer, 1.5)
    with pytest.raises(KeyError, match="neuron"):
        Neuron(layer, 0)(TensorDict({"output": x}, [2]))


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("rule", ["riemann_left", "riemann_middle", "riemann_trapezoid"])
def test_neuron_conductance_agrees_with_captum(model: str, rule: str) -> None:
    m, x, layer, unit = _setup(model)
    if model == "cnn":
        unit = (2, 1, 1)  # a unit that is active on these inputs
    n = 8
    got = _ours(NeuronConductance(T0, neuron=Neuron(layer, unit), n_steps=n, rule=rule, chunk_size=9), m, x)
    ref = ca.NeuronConductance(m, m.get_submodule(layer)).attribute(x, unit, target=0, n_steps=n, method=rule)
    scale = (n - 1) / n if rule == "riemann_trapezoid" else 1.0  # captum's trapezoid steps sum to (n-1)/n
    assert ref.abs().max() > 1e-6
    torch.testing.assert_close(got * scale, ref.to(DT), rtol=1e-6, atol=1e-9)  # captum: float32 step sizes


def T0(out: TensorDict) -> torch.Tensor:
    return out["output"][..., 0]
