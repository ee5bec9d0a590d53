"""Captum-style options: scalar and one-example baselines broadcast (``set_baselines``), callable baselines for
GradientSHAP, integer-valued targets for perturbation methods; captum as the oracle."""

from __future__ import annotations

import captum.attr as ca
import pytest
import torch
from tensordict import TensorDict

from rlhook.attribution import (
    FeatureAblation,
    GradientSHAP,
    IntegratedGradients,
    ShapleyValueSampling,
    set_baselines,
)
from tests.models import MLP

DT = torch.float64


def _setup(batch: int = 4):
    torch.manual_seed(2)
    m = MLP().to(DT)
    x = torch.randn(batch, 16, dtype=DT)
    return m, x, TensorDict({"input": x}, [batch])


def _run(method, m, td) -> TensorDict:
    with method.prepare(m) as hooked:
        return hooked(td.clone())


T1 = lambda o: o["output"][..., 1]  # noqa: E731


@pytest.mark.parametrize("kind", ["scalar", "one_example", "one_example_leading_1"])
def test_broadcast_baselines_match_captum(kind: str) -> None:
    m, x, td = _setup()
    one = torch.linspace(-0.5, 0.5, 16, dtype=DT)
    value = {"scalar": 0.5, "one_example": one, "one_example_leading_1": one[None]}[kind]
    theirs = 0.5 if kind == "scalar" else one[None]
    set_baselines(td, value, ["input"])
    ig = _run(IntegratedGradients(T1, n_steps=8, delta=False), m, td)["attr", "input"]
    ref = ca.IntegratedGradients(m).attribute(x, baselines=theirs, target=1, n_steps=8)
    torch.testing.assert_close(ig, ref, rtol=1e-7, atol=1e-7)  # captum's quadrature weights are float32
    fa = _run(FeatureAblation(T1), m, td)["attr", "input"]
    torch.testing.assert_close(fa, ca.FeatureAblation(m).attribute(x, baselines=theirs, target=1))


def test_set_baselines_refuses_a_wrong_shape_and_needs_keys() -> None:
    _, _, td = _setup()
    with pytest.raises(ValueError, match=r"one example \(16,\)"):
        set_baselines(td, torch.zeros(3), ["input"])
    with pytest.raises(ValueError, match="keys"):
        set_baselines(td, 0.0)
    assert set_baselines(td, {"input": 1.0})["baseline", "input"].eq(1).all()


def half_flipped(td: TensorDict) -> torch.Tensor:
    return 0.5 * td["input"].flip(-1)[:3]


def test_callable_baselines_equal_the_set_they_return() -> None:
    m, _, td = _setup()
    made = GradientSHAP(T1, n_samples=4, stdev=0.1, seed=3, baselines=half_flipped)
    given = GradientSHAP(T1, n_samples=4, stdev=0.1, seed=3, baselines=half_flipped(td))
    torch.testing.assert_close(
        _run(made, m, td)["attr", "input"], _run(given, m, td)["attr", "input"], rtol=0, atol=0
    )
    with pytest.raises(TypeError, match="returns a tensor"):
        _run(GradientSHAP(T1, baselines=lambda td: [1, 2]), m, td)


def positives(out: TensorDict) -> torch.Tensor:
    return (out["output"] > 0).sum(-1)  # an integer per example


def test_integer_valued_targets_match_captum() -> None:
    m, x, td = _setup()
    count = lambda inp: (m(inp) > 0).sum(-1)  # noqa: E731
    fa = _run(FeatureAblation(positives), m, td)["attr", "input"]
    torch.testing.assert_close(fa, ca.FeatureAblation(count).attribute(x).to(DT))
    torch.manual_seed(4)
    ref = ca.ShapleyValueSampling(count).attribute(x, n_samples=2)
    sv = _run(ShapleyValueSampling(positives, n_samples=2, seed=4), m, td)["attr", "input"]
    torch.testing.assert_close(sv, ref.to(DT), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="floating"):  # gradients still need a float target
        _run(IntegratedGradients(positives), m, td)
