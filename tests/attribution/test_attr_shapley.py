"""Shapley sampling and exact, KernelShap, Lime, FeaturePermutation beyond the matrix: float64 references
(Shapley values by brute force over orderings, a linear model's closed form), the efficiency axiom, K targets
at the forwards of one, boolean inputs for FeatureAblation, and the errors users see."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rlhook.attribution import (
    FeatureAblation,
    FeaturePermutation,
    KernelShap,
    Lime,
    Occlusion,
    ShapleyValues,
    ShapleyValueSampling,
)

DT = torch.float64


class Interacting(nn.Module):
    """``f(x) = a.x + x0 x1 - 2 x2 x3 x4 + tanh(x1 + x4)``: interactions of order 2 and 3 and a smooth one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.arange(1.0, 6.0, dtype=x.dtype)
        out = x @ a + x[:, 0] * x[:, 1] - 2 * x[:, 2] * x[:, 3] * x[:, 4] + torch.tanh(x[:, 1] + x[:, 4])
        return torch.stack([out, out.sin()], -1)


def _td(batch: int = 3, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 5, generator=g, dtype=DT)
    return TensorDict(
        {"input": x, ("baseline", "input"): 0.3 * torch.randn(batch, 5, generator=g, dtype=DT)}, [batch]
    )


def _run(method, model, td) -> TensorDict:
    with method.prepare(model) as hooked:
        return hooked(td.clone())


def _brute_force_shapley(model, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean marginal contribution over all 5! orderings, one example at a time (float64)."""
    n = x.shape[-1]
    phi = torch.zeros_like(x)
    for order in itertools.permutations(range(n)):
        cur = b.clone()
        prev = model(cur)[:, 0]
        for f in order:
            cur[:, f] = x[:, f]
            now = model(cur)[:, 0]
            phi[:, f] += now - prev
            prev = now
    return phi / math.factorial(n)


def test_exact_shapley_equals_the_brute_force_over_orderings() -> None:
    m, td = Interacting(), _td()
    got = _run(ShapleyValues(lambda o: o["output"][:, 0]), m, td)["attr", "input"]
    ref = _brute_force_shapley(m, td["input"], td["baseline", "input"])
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", [ShapleyValues, lambda t: ShapleyValueSampling(t, n_samples=3, seed=1)])
def test_shapley_maps_sum_to_the_target_change(method) -> None:
    """Efficiency: every ordering's contributions sum to f(x) - f(baseline), so sampled maps do too."""
    m, td = Interacting(), _td()
    got = _run(method(lambda o: o["output"][:, 1]), m, td)["attr", "input"]
    gap = m(td["input"])[:, 1] - m(td["baseline", "input"])[:, 1]
    torch.testing.assert_close(got.sum(-1), gap, rtol=1e-12, atol=1e-12)


def test_kernel_shap_on_a_linear_model_is_its_closed_form() -> None:
    """For f = w.x + c the Shapley value of x_i is w_i (x_i - b_i); the surrogate fits exactly."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 2).double()
    td = _td(4)
    got = _run(KernelShap(lambda o: o["output"][:, 1], n_samples=24, seed=2), lin, td)["attr", "input"]
    ref = lin.weight[1].detach() * (td["input"] - td["baseline", "input"])
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    lime = _run(Lime(lambda o: o["output"][:, 1], n_samples=24, alpha=0, seed=2), lin, td)["attr", "input"]
    torch.testing.assert_close(
        lime, ref, rtol=1e-9, atol=1e-10
    )  # any positive weights fit a linear f exactly


class Counter(nn.Module):
    """Counts forward calls and rows."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls, self.rows = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls, self.rows = self.calls + 1, self.rows + x.shape[0]
        return self.inner(x)


def _eight(o: TensorDict) -> TensorDict:
    out = o["output"]
    return TensorDict({f"t{i}": out[:, i % 2] * (i + 1) + i for i in range(8)}, o.batch_size)


MAKERS = {
    "shapley_sampling": lambda t: ShapleyValueSampling(t, n_samples=2, chunk_size=16),
    "shapley_exact": lambda t: ShapleyValues(t, chunk_size=16),
    "kernel_shap": lambda t: KernelShap(t, n_samples=20, chunk_size=16),
    "lime": lambda t: Lime(t, n_samples=20, alpha=0, chunk_size=16),
    "feature_permutation": lambda t: FeaturePermutation(t, chunk_size=16),
    "feature_ablation": lambda t: FeatureAblation(t, chunk_size=16),
    "occlusion": lambda t: Occlusion(t, window=(2,), chunk_size=16),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_eight_targets_cost_the_forwards_of_one(name: str) -> None:
    td = _td(3)
    one, many = Counter(Interacting()), Counter(Interacting())
    single = _run(MAKERS[name](lambda o: o["output"][:, 1] * 4 + 3), one, td)
    maps = _run(MAKERS[name](_eight), many, td)
    assert (many.calls, many.rows) == (one.calls, one.rows)
    torch.testing.assert_close(maps["attr", "t3", "input"], single["attr", "input"], rtol=1e-10, atol=1e-12)


def test_feature_ablation_ablates_boolean_inputs() -> None:
    class Switches(nn.Module):
        def forward(self, on: torch.Tensor) -> torch.Tensor:
            return (on.to(DT) * torch.arange(1.0, 5.0, dtype=DT)).cumsum(-1)

    on = torch.tensor([[True, False, True, True], [False, True, True, False]])
    td = TensorDict({"input": on}, [2])
    got = _run(FeatureAblation(lambda o: o["output"][:, -1], inputs=["input"]), Switches(), td)[
        "attr", "input"
    ]
    torch.testing.assert_close(
        got, on.to(DT) * torch.arange(1.0, 5.0, dtype=DT)
    )  # switching i off loses i + 1


def test_errors_name_the_fix() -> None:
    m = Interacting()
    with pytest.raises(ValueError, match="at least 2 examples"):
        _run(FeaturePermutation(lambda o: o["output"][:, 0]), m, _td(1))
    with pytest.raises(ValueError, match="feature_mask=.*ShapleyValueSampling"):
        _run(ShapleyValues(lambda o: o["output"][:, 0], max_features=4), m, _td(2))
    with pytest.raises(ValueError, match="alpha"):
        Lime(lambda o: o["output"][:, 0], alpha=-1)
    with pytest.raises(TypeError, match="n_samples"):
        KernelShap(lambda o: o["output"][:, 0], n_samples=0.5)
