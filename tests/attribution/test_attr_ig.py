"""Integrated gradients: every rule against captum, the convergence delta, completeness, the Sundararajan toy
functions, several targets in one pass, layer IG, and the errors users see."""

from __future__ import annotations

import captum.attr as ca
import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rlhook import MissingKeyError
from rlhook.attribution import IntegratedGradients, Saliency
from tests.models import CNN, MLP

RULES = {
    "gausslegendre": "gausslegendre",
    "riemann_left": "riemann_left",
    "riemann_right": "riemann_right",
    "riemann_middle": "riemann_middle",
    "riemann_trapezoid": "riemann_trapezoid",
}


def _mlp() -> tuple[nn.Module, TensorDict]:
    torch.manual_seed(0)
    m = MLP().double()
    x = torch.randn(4, 16, dtype=torch.float64)
    return m, TensorDict({"input": x, ("baseline", "input"): 0.1 * torch.randn_like(x)}, batch_size=[4])


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("multiply", [True, False])
@pytest.mark.parametrize("rule", list(RULES))
def test_ig_rule_matches_captum(rule: str, multiply: bool, model_name: str) -> None:
    torch.manual_seed(1)
    m = MLP().double() if model_name == "mlp" else CNN().double()
    x = (
        torch.randn(3, 16, dtype=torch.float64)
        if model_name == "mlp"
        else torch.randn(3, 3, 8, 8, dtype=torch.float64)
    )
    b = 0.2 * torch.randn_like(x)
    n = 7
    td = TensorDict({"input": x, ("baseline", "input"): b}, batch_size=[3])
    method = IntegratedGradients(
        lambda o: o["output"][..., 1], n_steps=n, rule=rule, multiply_by_inputs=multiply
    )
    with method.prepare(m) as hooked:
        out = hooked(td.clone())
    ig = ca.IntegratedGradients(m, multiply_by_inputs=multiply)
    if multiply:
        ref, delta = ig.attribute(x, b, target=1, n_steps=n, method=rule, return_convergence_delta=True)
    else:
        ref = ig.attribute(x, b, target=1, n_steps=n, method=rule)
    if rule == "riemann_trapezoid":  # our weights sum to 1; captum's to (n - 1) / n
        ref = ref * n / (n - 1)
    # captum casts its quadrature weights to float32: agreement to ~1e-7 relative
    torch.testing.assert_close(out["attr", "input"], ref, rtol=2e-7, atol=1e-9)
    if multiply and rule != "riemann_trapezoid":
        torch.testing.assert_close(out["attr_delta"], delta, rtol=1e-6, atol=1e-7)


def test_trapezoid_relation_is_exact_in_float64() -> None:
    """ours = captum * n / (n - 1) for the trapezoid rule (captum's weights sum to (n - 1) / n)."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    from rlhook.attribution.integrated import path_points

    for n in (2, 5, 33):
        step_sizes, alphas = approximation_parameters("riemann_trapezoid")
        ours_a, ours_w = path_points(n, "riemann_trapezoid")
        torch.testing.assert_close(ours_a, torch.tensor(alphas(n), dtype=torch.float64), rtol=0, atol=1e-15)
        torch.testing.assert_close(ours_w, torch.tensor(step_sizes(n), dtype=torch.float64) * n / (n - 1))


@pytest.mark.parametrize("batch", [(4,), (2, 3), ()])
@pytest.mark.parametrize("chunk", [None, 29])
def test_completeness(batch: tuple, chunk: int | None) -> None:
    torch.manual_seed(2)
    m = MLP(act=nn.Tanh).double()
    x = torch.randn(*batch, 16, dtype=torch.float64)
    td = TensorDict({"input": x, ("baseline", "input"): torch.zeros_like(x)}, batch_size=batch)
    with IntegratedGradients(lambda o: o["output"][..., 0], n_steps=24, chunk_size=chunk).prepare(
        m
    ) as hooked:
        out = hooked(td)
    assert out["attr_delta"].shape == batch
    assert out["attr_delta"].abs().max() < 1e-8  # Gauss-Legendre on a smooth network
    total = out["attr", "input"].sum(-1)
    f = (m(x.reshape(-1, 16))[:, 0] - m(torch.zeros(1, 16, dtype=torch.float64))[:, 0]).reshape(batch)
    torch.testing.assert_close(total, f.detach(), rtol=1e-8, atol=1e-8)


class Sundararajan2(nn.Module):
    """f = ReLU(ReLU(x1) - 1 - ReLU(x2))"""

    def forward(self, x1, x2):
        return torch.relu(torch.relu(x1) - 1 - torch.relu(x2))


class Sundararajan3(nn.Module):
    """f = ReLU(ReLU(x1 - 1) - ReLU(x2))"""

    def forward(self, x1, x2):
        return torch.relu(torch.relu(x1 - 1) - torch.relu(x2))


@pytest.mark.parametrize("model", [Sundararajan2(), Sundararajan3()], ids=["f2", "f3"])
def test_sundararajan_toy_functions(model: nn.Module) -> None:
    td = TensorDict(
        {"x1": torch.tensor([3.0], dtype=torch.float64), "x2": torch.tensor([1.0], dtype=torch.float64)},
        batch_size=[1],
    )
    method = IntegratedGradients("output", n_steps=1000, rule="riemann_middle")
    with method.prepare(model, in_keys=["x1", "x2"]) as hooked:
        out = hooked(td)
    attr = torch.cat([out["attr", "x1"], out["attr", "x2"]])
    torch.testing.assert_close(attr, torch.tensor([1.5, -0.5], dtype=torch.float64), rtol=0, atol=1e-9)
    assert abs(out["attr_delta"].item()) < 1e-9


def _many(out: TensorDict) -> TensorDict:
    return TensorDict({f"c{k}": out["output"][..., k] for k in range(3)}, batch_size=out.batch_size)


@pytest.mark.parametrize("batched", [False, True])
def test_several_targets_equal_separate_runs(batched: bool) -> None:
    m, td = _mlp()
    with IntegratedGradients(_many, n_steps=6, batched=batched, chunk_size=7).prepare(m) as hooked:
        out = hooked(td.clone())
    for k in range(3):
        with IntegratedGradients(lambda o, k=k: o["output"][..., k], n_steps=6).prepare(m) as hooked:
            one = hooked(td.clone())
        torch.testing.assert_close(
            out["attr", f"c{k}", "input"], one["attr", "input"], rtol=1e-12, atol=1e-12
        )
        torch.testing.assert_close(out["attr_delta", f"c{k}"], one["attr_delta"], rtol=1e-10, atol=1e-12)


def test_layer_ig_matches_captum() -> None:
    m, td = _mlp()
    with IntegratedGradients(lambda o: o["output"][..., 2], n_steps=9, layers="layers.1").prepare(
        m
    ) as hooked:
        out = hooked(td.clone())
    ref = ca.LayerIntegratedGradients(m, m.layers[1]).attribute(
        td["input"], td["baseline", "input"], target=2, n_steps=9
    )
    torch.testing.assert_close(out["attr", "layers.1"], ref, rtol=2e-7, atol=1e-9)


def test_one_step_is_gradient_times_difference() -> None:
    """IG with one midpoint step = (x - b) * grad f((x + b) / 2) (a degenerate-case oracle)."""
    m, td = _mlp()
    with IntegratedGradients(lambda o: o["output"][..., 0], n_steps=1, rule="riemann_middle").prepare(
        m
    ) as hooked:
        out = hooked(td.clone())
    x, b = td["input"], td["baseline", "input"]
    mid = ((x + b) / 2).requires_grad_(True)
    (g,) = torch.autograd.grad(m(mid)[:, 0].sum(), mid)
    torch.testing.assert_close(out["attr", "input"], (x - b) * g)


def test_wrong_baseline_shape_names_both_shapes() -> None:
    m, td = _mlp()
    td = TensorDict(
        {"input": td["input"], ("baseline", "input"): torch.zeros(4, 15, dtype=torch.float64)}, [4]
    )
    with IntegratedGradients("output").prepare(m) as hooked:
        with pytest.raises(ValueError, match=r"\(4, 15\).*\(4, 16\)"):
            hooked(td)


def test_missing_input_key_lists_the_keys() -> None:
    m, td = _mlp()
    with Saliency("output", inputs=["obs"]).prepare(m) as hooked:
        with pytest.raises(
            MissingKeyError, match=r"'obs' is not in the TensorDict; its keys are \[.*'input'"
        ):
            hooked(td)


def test_target_not_differentiable_is_a_clear_error() -> None:
    m, td = _mlp()
    with Saliency(lambda o: o["output"][..., 0].detach()).prepare(m) as hooked:
        with pytest.raises(RuntimeError, match="does not depend on the attributed inputs"):
            hooked(td)
    with Saliency(lambda o: o["output"].argmax(-1)).prepare(m) as hooked:
        with pytest.raises(TypeError, match="not a floating tensor"):
            hooked(td)
