"""Targets with one value for the whole batch (``Aggregate``, captum's aggregate mode): the rows of the matrix
that support it, against captum with a forward that returns one scalar for the batch, at float64; closed
forms on a linear model; what batching means; clear refusals for the methods that need per-example values."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import captum.attr as ca
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLinearRegression
from tensordict import TensorDict

from rlhook.attribution import (
    Deconvolution,
    FeatureAblation,
    FeaturePermutation,
    GradCAM,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    Lime,
    Occlusion,
    Saliency,
    ShapleyValues,
    ShapleyValueSampling,
)
from rlhook.targets import Aggregate
from tests.attribution import captum_perturbation as cp
from tests.attribution.attr_cases import CASES, Case, flat_inputs

DT = torch.float64


def _total(case: Case) -> Aggregate:
    """The case's per-example target summed over the batch."""
    return Aggregate(lambda out: case.target(out).sum())


class _Scalar(torch.nn.Module):
    """Captum's forward returning one scalar for the batch, shape (1,) (captum's gradient methods index
    ``output[0]``); a module holding the case's model, so captum's guided methods find its ReLUs."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.model = case.model
        self.case = case

    def forward(self, *args):
        out = self.case.captum_forward(*args)
        out = out[:, self.case.captum_target] if self.case.captum_target is not None else out
        return out.sum().reshape(1)


def _cap(build, masks: Callable | None = None, seeded: bool = False, per_case=None, **kw) -> Callable:
    """Captum's ``build(forward)`` on the scalar forward; ``masks(case)`` become captum's feature masks (first
    dim 1, as captum's aggregate mode requires); ``per_case(case)`` gives more keyword arguments."""

    def run(case: Case, td: TensorDict) -> tuple:
        xs = flat_inputs(case, td)
        extra = {"feature_mask": tuple(masks(case)[k].unsqueeze(0) for k in case.keys())} if masks else {}
        extra |= per_case(case) if per_case else {}
        if seeded:
            torch.manual_seed(cp.SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = build(_Scalar(case)).attribute(
                xs, additional_forward_args=case.extra(td) or None, **extra, **kw
            )
        return out if isinstance(out, tuple) else (out,)

    return run


def _cap_layer(cls, **kw) -> Callable:
    def run(case: Case, td: TensorDict) -> tuple:
        layer = case.model.get_submodule(case.layer)
        attribute_to_input = cls is ca.LayerIntegratedGradients
        out = cls(_Scalar(case), layer).attribute(
            flat_inputs(case, td), attribute_to_layer_input=attribute_to_input, **kw
        )
        return out if isinstance(out, tuple) else (out,)

    return run


def _cap_gradcam(case: Case, td: TensorDict) -> tuple:
    layer = case.model.get_submodule(case.conv)
    return (ca.LayerGradCam(_Scalar(case), layer).attribute(flat_inputs(case, td), relu_attributions=True),)


@dataclass
class Row:
    make: Callable[[Case], object]
    captum: Callable[[Case, TensorDict], tuple]
    tol: float = 1e-9
    on: str = "input"  # "input", "relu" (cases with nn.ReLU modules) or "conv"


def _window(shape: tuple) -> tuple:
    return (3, 3, 3) if len(shape) == 3 else (2,)


ROWS: dict[str, Row] = {
    "saliency": Row(lambda c: Saliency(_total(c)), _cap(ca.Saliency)),
    "ixg": Row(lambda c: InputXGradient(_total(c)), _cap(ca.InputXGradient)),
    "ig": Row(
        lambda c: IntegratedGradients(_total(c), n_steps=8), _cap(ca.IntegratedGradients, n_steps=8), tol=1e-7
    ),
    "layer_ig_input": Row(
        lambda c: IntegratedGradients(_total(c), n_steps=8, layers=c.layer, layer_input=True),
        _cap_layer(ca.LayerIntegratedGradients, n_steps=8),
        tol=1e-7,
        on="relu",
    ),
    "ixg_layer": Row(
        lambda c: InputXGradient(_total(c), layers=c.layer, inputs=[]),
        _cap_layer(ca.LayerGradientXActivation),
        on="relu",
    ),
    "guided": Row(lambda c: GuidedBackprop(_total(c)), _cap(ca.GuidedBackprop), on="relu"),
    "deconvolution": Row(lambda c: Deconvolution(_total(c)), _cap(ca.Deconvolution), on="relu"),
    "gradcam": Row(lambda c: GradCAM(_total(c), layers=c.conv), _cap_gradcam, on="conv"),
    "feature_ablation": Row(
        lambda c: FeatureAblation(_total(c), feature_mask=cp.contiguous_masks(c)),
        _cap(ca.FeatureAblation, cp.contiguous_masks),
    ),
    "occlusion": Row(
        lambda c: Occlusion(_total(c), window={k: _window(s) for k, s in c.shapes.items()}),
        _cap(
            ca.Occlusion,
            per_case=lambda c: {"sliding_window_shapes": tuple(_window(s) for s in c.shapes.values())},
        ),
        tol=1e-6,  # captum returns occlusion maps in float32
    ),
    "shapley_sampling": Row(
        lambda c: ShapleyValueSampling(
            _total(c), n_samples=cp.N_SHAPLEY, seed=cp.SEED, feature_mask=cp.contiguous_masks(c)
        ),
        _cap(ca.ShapleyValueSampling, cp.contiguous_masks, seeded=True, n_samples=cp.N_SHAPLEY),
        tol=1e-6,
    ),
    "shapley_exact": Row(
        lambda c: ShapleyValues(_total(c), feature_mask=cp.contiguous_masks(c, coarse=True)),
        _cap(ca.ShapleyValues, lambda c: cp.contiguous_masks(c, coarse=True)),
        tol=2e-5,
    ),
    "kernel_shap": Row(
        lambda c: KernelShap(
            _total(c), n_samples=cp.N_LIME, seed=cp.SEED, feature_mask=cp.contiguous_masks(c)
        ),
        _cap(ca.KernelShap, cp.contiguous_masks, seeded=True, n_samples=cp.N_LIME),
        tol=1e-5,
    ),
    "lime": Row(
        lambda c: Lime(
            _total(c), n_samples=cp.N_LIME, seed=cp.SEED, alpha=0, feature_mask=cp.contiguous_masks(c)
        ),
        _cap(
            lambda f: ca.Lime(f, SkLearnLinearRegression()),
            cp.contiguous_masks,
            seeded=True,
            n_samples=cp.N_LIME,
        ),
        tol=1e-5,
    ),
    "feature_permutation": Row(
        lambda c: FeaturePermutation(_total(c), seed=cp.SEED, feature_mask=cp.contiguous_masks(c)),
        _cap(ca.FeaturePermutation, cp.contiguous_masks, seeded=True),
    ),
}


def _products(case: Case, td: TensorDict, method) -> TensorDict:
    with case.prepare(method) as hooked:
        return hooked(td.clone())


@pytest.mark.parametrize("batch", [(5,), (2, 3)], ids=["b5", "b2x3"])
@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("row", list(ROWS))
def test_aggregate_agrees_with_captum_scalar_forward(row: str, case_name: str, batch: tuple) -> None:
    case = CASES[case_name]()
    spec = ROWS[row]
    if (spec.on == "relu" and not case.relu) or (spec.on == "conv" and not case.conv):
        pytest.skip(f"{row} does not apply to {case_name}")
    td = case.td(batch)
    ours = _products(case, td, spec.make(case))["attr"]
    theirs = spec.captum(case, td)
    keys = {"gradcam": [case.conv], "layer_ig_input": [case.layer], "ixg_layer": [case.layer]}.get(
        row, case.keys()
    )
    n = td.numel()
    for k, ref in zip(keys, theirs):
        got = ours[k].reshape(n, *ours[k].shape[len(batch) :])
        if ref.shape[0] == 1:  # captum's one map for the batch: rlhook writes it in every row
            ref = ref.expand(n, *ref.shape[1:])
        assert got.shape == ref.shape, (got.shape, ref.shape)
        torch.testing.assert_close(got, ref.to(got.dtype), rtol=spec.tol, atol=spec.tol)
