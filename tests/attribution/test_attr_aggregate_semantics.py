"""What an ``Aggregate`` target (one value for the whole batch) means: closed forms on linear models (summed
and squared-sum outputs), batched semantics (a summed target's gradient maps equal the per-example ones; its
ablation map is the sum of the per-example maps), chunking, several aggregate targets in one call, a
TensorDictModule that returns a 0-d loss, and clear refusals."""

from __future__ import annotations

import captum.attr as ca
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torch import nn

from rlhook import hook_count
from rlhook.attribution import (
    DeepLift,
    FeatureAblation,
    FeaturePermutation,
    GradientSHAP,
    InputXGradient,
    IntegratedGradients,
    LayerConductance,
    NoiseTunnel,
    Occlusion,
    PerturbationSaliency,
    Saliency,
    ShapleyValues,
    ShapleyValueSampling,
    SmoothGrad,
)
from rlhook.attribution.lrp import LRP
from rlhook.targets import Aggregate

DT = torch.float64


def _linear(out_features: int = 3, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, out_features, bias=bias).to(DT)


def _td(batch: int = 5) -> TensorDict:
    x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(1), dtype=DT)
    return TensorDict({"input": x}, batch_size=[batch])


def _attr(method, model: nn.Module, td: TensorDict, key="input") -> torch.Tensor:
    with method.prepare(model) as hooked:
        return hooked(td.clone())["attr", key]


SUM = Aggregate(lambda out: out["output"][:, 1].sum())


def test_summed_linear_output_has_the_closed_form_gradient_and_drops():
    lin, td = _linear(), _td()
    x, w = td["input"], lin.weight[1].detach()
    torch.testing.assert_close(_attr(Saliency(SUM, abs=False), lin, td), w.expand_as(x))
    torch.testing.assert_close(_attr(InputXGradient(SUM), lin, td), x * w)
    torch.testing.assert_close(_attr(IntegratedGradients(SUM, n_steps=4), lin, td), x * w)
    drop = (w * x).sum(0).expand_as(x)  # ablating input i in every example drops the sum by sum_e w_i x_ei
    for method in (FeatureAblation(SUM), Occlusion(SUM, window=(1,)), ShapleyValues(SUM)):
        torch.testing.assert_close(_attr(method, lin, td), drop)
    # a sum over the batch does not change when a feature is shuffled across the batch
    torch.testing.assert_close(_attr(FeaturePermutation(SUM), lin, td), torch.zeros_like(x))


def test_a_target_coupling_the_examples_has_the_closed_form_maps():
    """``F = S^2`` with ``S = sum_e w . x_e``: ``dF/dx_e = 2 S w``; IG from zero gives ``x_ei w_i S`` (summing
    to ``F``); ablating input ``i`` everywhere leaves ``S - sum_e w_i x_ei``. Only right when each forward holds
    exactly the whole batch at one point of the path."""
    lin, td = _linear(1, bias=False), _td()
    x, w = td["input"], lin.weight[0].detach()
    s = (x @ w).sum()
    square = Aggregate(lambda out: out["output"].sum() ** 2)
    torch.testing.assert_close(_attr(Saliency(square, abs=False), lin, td), (2 * s * w).expand_as(x))
    with IntegratedGradients(square, n_steps=3).prepare(lin) as hooked:
        out = hooked(td.clone())
    torch.testing.assert_close(out["attr", "input"], x * w * s)
    torch.testing.assert_close(out["attr_delta"], torch.zeros(5, dtype=DT), atol=1e-12, rtol=0)
    drop = (s**2 - (s - (w * x).sum(0)) ** 2).expand_as(x)
    torch.testing.assert_close(_attr(FeatureAblation(square), lin, td), drop)
    torch.testing.assert_close(_attr(FeatureAblation(square, chunk_size=10), lin, td), drop)


def test_a_mean_loss_gradient_is_one_over_the_batch_and_ig_is_complete():
    lin, td = _linear(), _td()
    td["labels"] = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=DT)
    loss = Aggregate(lambda out: ((out["output"] - out["labels"]) ** 2).mean())
    x = td["input"].clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(((lin(x) - td["labels"]) ** 2).mean(), x)
    torch.testing.assert_close(_attr(Saliency(loss, abs=False), lin, td), ref)
    with IntegratedGradients(loss, n_steps=4).prepare(lin) as hooked:
        delta = hooked(td.clone())["attr_delta"]
    assert delta.shape == (5,) and torch.all(delta == delta[0])  # the batch's one gap, in every row
    assert delta.abs().max() < 1e-12


def test_batched_semantics_of_a_summed_target():
    """Gradient maps of ``Aggregate(sum of t)`` equal those of the per-example ``t``; a perturbation map is
    the sum over the batch of the per-example maps (each feature is perturbed in every example at once)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
    td = _td()

    def per_example(out):
        return out["output"][:, 1]

    for make in (lambda t: Saliency(t, abs=False), lambda t: IntegratedGradients(t, n_steps=6)):
        torch.testing.assert_close(_attr(make(SUM), model, td), _attr(make(per_example), model, td))
    mask = torch.tensor([0, 0, 1, 2])
    for make in (
        lambda t: FeatureAblation(t, feature_mask=mask),
        lambda t: ShapleyValueSampling(t, n_samples=3, feature_mask=mask),
    ):
        together = _attr(make(SUM), model, td)
        summed = _attr(make(per_example), model, td).sum(0)
        torch.testing.assert_close(together, summed.expand_as(together))
        assert not torch.allclose(together, _attr(make(per_example), model, td))


def test_a_mask_per_example_gives_each_row_its_features_values():
    lin, td = _linear(), _td(3)
    x, w = td["input"], lin.weight[1].detach()
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]])
    td["feature_mask", "input"] = mask
    drop = torch.stack([(w * x * (mask == f)).sum() for f in (0, 1)])  # feature f ablated in every example
    torch.testing.assert_close(_attr(FeatureAblation(SUM), lin, td), drop[mask])


def test_chunks_hold_whole_batches():
    lin, td = _linear(), _td()
    whole = _attr(IntegratedGradients(SUM, n_steps=4), lin, td)
    torch.testing.assert_close(_attr(IntegratedGradients(SUM, n_steps=4, chunk_size=12), lin, td), whole)
    for method in (Saliency(SUM, chunk_size=4), FeatureAblation(SUM, chunk_size=4)):
        with pytest.raises(ValueError, match=r"chunk_size=4 is below the batch of 5 rows"):
            _attr(method, lin, td)


def test_several_aggregate_targets_in_one_call_equal_separate_runs():
    lin, td = _linear(), _td()
    a = Aggregate(lambda out: out["output"][:, 0].sum())
    b = Aggregate(lambda out: out["output"][:, 2].mean() ** 2)
    both = Aggregate(
        lambda out: TensorDict({"a": out["output"][:, 0].sum(), "b": out["output"][:, 2].mean() ** 2}, [])
    )
    for make in (
        lambda t, **kw: Saliency(t, abs=False, **kw),
        FeatureAblation,
        lambda t, **kw: IntegratedGradients(t, n_steps=4, **kw),
    ):
        for batched in (False, True):  # one backward per target, or one batched backward
            with make(both, batched=batched).prepare(lin) as hooked:
                maps = hooked(td.clone())["attr"]
            for name, single in (("a", a), ("b", b)):
                torch.testing.assert_close(maps[name, "input"], _attr(make(single), lin, td))


class _Loss(TensorDictModuleBase):
    """A TorchRL-style loss: a TensorDict with ``batch_size []`` holding a 0-d ``"loss"``."""

    in_keys, out_keys = ["input"], ["loss"]

    def __init__(self) -> None:
        super().__init__()
        self.net = _linear()

    def forward(self, td: TensorDict) -> TensorDict:
        return TensorDict({"loss": torch.tanh(self.net(td["input"])).pow(2).mean()}, [])


def test_a_module_whose_output_key_holds_a_scalar_agrees_with_captum():
    """Saliency and FeatureAblation equal captum's on a mean loss. Captum's IG runs all ``n_steps`` points in one
    forward, so a mean over the batch becomes a mean over steps x batch: its map is rlhook's / ``n_steps``
    (rlhook's sums to ``F(x) - F(baseline)``; test_a_mean_loss_gradient_is_one_over_the_batch_and_ig_is_complete)."""
    loss, td = _Loss(), _td()
    forward = lambda x: loss(TensorDict({"input": x}, [x.shape[0]]))["loss"].reshape(1)  # noqa: E731
    x = td["input"]
    for ours, theirs in (
        (Saliency(Aggregate("loss"), abs=False), ca.Saliency(forward).attribute(x, abs=False)),
        (FeatureAblation(Aggregate("loss")), ca.FeatureAblation(forward).attribute(x).expand_as(x)),
        (
            IntegratedGradients(Aggregate("loss"), n_steps=8),
            8 * ca.IntegratedGradients(forward).attribute(x, n_steps=8),
        ),
    ):
        torch.testing.assert_close(_attr(ours, loss, td), theirs, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "make",
    [
        lambda t: NoiseTunnel(Saliency(t)),
        lambda t: SmoothGrad(t),
        lambda t: GradientSHAP(t),
        lambda t: DeepLift(t),
        lambda t: LRP(t),
        lambda t: LayerConductance(t, layers="0"),
        lambda t: PerturbationSaliency(t),
    ],
    ids=["noise_tunnel", "smoothgrad", "gradient_shap", "deeplift", "lrp", "conductance", "perturbation"],
)
def test_methods_that_need_per_example_values_refuse_an_aggregate_target(make):
    with pytest.raises(ValueError, match=r"needs one target value per example.*drop Aggregate.*Saliency"):
        make(SUM)


def test_a_target_that_reduces_the_batch_without_aggregate_points_to_it():
    lin, td = _linear(), _td()
    with pytest.raises(ValueError, match=r"shape \(\).*Aggregate\(target\)"):
        _attr(Saliency(lambda out: out["output"].sum()), lin, td)
    with pytest.raises(ValueError, match=r"one value for the whole batch"):
        _attr(Saliency(Aggregate(lambda out: out["output"].sum(-1))), lin, td)

    class Summed(nn.Module):
        def forward(self, x):
            return lin(x).sum()

    with pytest.raises(ValueError, match=r"output 'output' has shape \(\).*Aggregate"):
        _attr(Saliency(Aggregate("output")), Summed(), td)


def test_no_hook_is_left_after_a_failing_aggregate_target():
    lin, td = _linear(), _td()

    def fail(out):
        raise RuntimeError("in the target")

    for method in (IntegratedGradients(Aggregate(fail)), FeatureAblation(Aggregate(fail))):
        with pytest.raises(RuntimeError, match="in the target"), method.prepare(lin) as hooked:
            hooked(td.clone())
        assert hook_count(lin) == 0
