"""The attribution test matrix: methods x models (MLP, CNN, multi-input TensorDictModule, TorchRL actor) x
checks (captum agreement across batch shapes, batched == one-by-one and chunked == unchunked on each model,
several targets in one call). The lifecycle contracts of every method are in ``tests/test_contracts.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import captum.attr as ca
import pytest
import torch
from tensordict import TensorDict

from rlhook.attribution import (
    AttributionPatching,
    Deconvolution,
    DeepLift,
    DeepLiftShap,
    FeatureAblation,
    FeaturePermutation,
    GradCAM,
    GradientSHAP,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    LayerConductance,
    Lime,
    NoiseTunnel,
    Occlusion,
    PerturbationSaliency,
    Saliency,
    ShapleyValues,
    ShapleyValueSampling,
    SmoothGrad,
)
from rlhook.attribution.gradient_shap import shap_draws
from rlhook.attribution.lrp import LRP, Composite, Epsilon, Norm
from rlhook.attribution.lrp.composite import POOLING
from rlhook.attribution.noise_tunnel import draw_noise
from tests.attribution import captum_layers as cl
from tests.attribution import captum_perturbation as cp
from tests.attribution.attr_cases import CASES, Case, captum_noise, captum_shap_draws, flat_inputs

N_NT, STDEV, SEED = 4, 0.3, 5


@dataclass
class Row:
    """One method of the matrix: how rlhook runs it (``None``: not applicable to the case) and how captum
    computes the same attributions from the flattened inputs."""

    make: Callable[[Case], object]
    captum: Callable[[Case, TensorDict], tuple] | None
    random: bool = False  # draws depend on the batch: no one-by-one check
    chunks: bool = True
    tol: float = 1e-9
    min_batch: int = 1  # FeaturePermutation shuffles across the batch


def _cap(cls, **kw) -> Callable:
    def run(case: Case, td: TensorDict) -> tuple:
        xs = flat_inputs(case, td)
        out = cls(case.captum_forward).attribute(
            xs, target=case.captum_target, additional_forward_args=case.extra(td) or None, **kw
        )
        return out if isinstance(out, tuple) else (out,)

    return run


def _cap_nt(case: Case, td: TensorDict) -> tuple:
    xs = flat_inputs(case, td)
    noise = draw_noise(dict(zip(case.keys(), xs)), N_NT, STDEV, SEED)
    with captum_noise(noise, case.keys()):
        return ca.NoiseTunnel(ca.Saliency(case.captum_forward)).attribute(
            xs,
            nt_type="vargrad",
            nt_samples=N_NT,
            stdevs=STDEV,
            target=case.captum_target,
            additional_forward_args=case.extra(td) or None,
            abs=False,
        )


def _cap_shap(case: Case, td: TensorDict) -> tuple:
    xs = flat_inputs(case, td)
    refs = cl.reference_set(case)
    index, alpha = shap_draws(xs[0].shape[0], N_NT, 3, SEED, torch.float64)
    noise = draw_noise(dict(zip(case.keys(), xs)), N_NT, STDEV, SEED)
    with captum_noise(noise, case.keys()), captum_shap_draws(index, alpha):
        return ca.GradientShap(case.captum_forward).attribute(
            xs,
            baselines=tuple(refs[k] for k in case.keys()),
            n_samples=N_NT,
            stdevs=STDEV,
            target=case.captum_target,
            additional_forward_args=case.extra(td) or None,
        )


def _cap_gradcam(case: Case, td: TensorDict) -> tuple:
    layer = case.model.get_submodule(case.conv)
    xs = flat_inputs(case, td)
    return (
        ca.LayerGradCam(case.captum_forward, layer).attribute(
            xs, target=case.captum_target, relu_attributions=True
        ),
    )


def _cap_occlusion(case: Case, td: TensorDict) -> tuple:
    xs = flat_inputs(case, td)
    windows = tuple(_window(s) for s in (case.shapes[k] for k in case.keys()))
    out = ca.Occlusion(case.captum_forward).attribute(
        xs,
        sliding_window_shapes=windows,
        strides=tuple(_stride(s) for s in (case.shapes[k] for k in case.keys())),
        target=case.captum_target,
        additional_forward_args=case.extra(td) or None,
    )
    return out if isinstance(out, tuple) else (out,)


def _window(shape: tuple) -> tuple:
    return (3, 3, 3) if len(shape) == 3 else (2,)


def _stride(shape: tuple) -> tuple:
    return (1, 2, 2) if len(shape) == 3 else (1,)


def _masks(case: Case) -> dict | None:
    """Per-element features for vectors; 4x4 patches per channel for images (12 features, keeps it fast)."""
    masks = {}
    for k, s in case.shapes.items():
        if len(s) == 3:
            cells = torch.arange(s[0] * 4).reshape(s[0], 2, 2)
            masks[k] = cells.repeat_interleave(s[1] // 2, 1).repeat_interleave(s[2] // 2, 2)
        else:
            masks[k] = torch.arange(s[0]) + 100 * len(masks)
    return masks


def _cap_ablation(case: Case, td: TensorDict) -> tuple:
    xs = flat_inputs(case, td)
    masks = _masks(case)
    out = ca.FeatureAblation(case.captum_forward).attribute(
        xs,
        target=case.captum_target,
        additional_forward_args=case.extra(td) or None,
        feature_mask=tuple(masks[k].unsqueeze(0) for k in case.keys()),
    )
    return out if isinstance(out, tuple) else (out,)


def _cap_lrp(case: Case, td: TensorDict) -> tuple | None:
    if not case.relu:
        return None  # captum's LRP has no rule for functional products / TorchRL distribution heads
    return (ca.LRP(case.captum_forward).attribute(flat_inputs(case, td), target=case.captum_target)[0],)


ROWS: dict[str, Row] = {
    "saliency": Row(lambda c: Saliency(c.target), _cap(ca.Saliency)),
    "ixg": Row(lambda c: InputXGradient(c.target), _cap(ca.InputXGradient)),
    "ig": Row(
        lambda c: IntegratedGradients(c.target, n_steps=8, delta=False),
        _cap(ca.IntegratedGradients, n_steps=8),
        tol=1e-7,  # captum casts the quadrature weights to float32
    ),
    "layer_ig_input": Row(
        lambda c: (
            IntegratedGradients(c.target, n_steps=8, layers=c.layer, layer_input=True) if c.relu else None
        ),
        lambda c, td: cl.layer(ca.LayerIntegratedGradients, c, td, n_steps=8),
        tol=1e-7,
    ),
    "conductance": Row(
        lambda c: LayerConductance(c.target, n_steps=8, layers=c.layer) if c.relu else None,
        lambda c, td: cl.layer(ca.LayerConductance, c, td, n_steps=8, attribute_to_layer_input=False),
        tol=1e-7,
    ),
    "ixg_layer_input": Row(
        lambda c: InputXGradient(c.target, layers=c.layer, layer_input=True, inputs=[]) if c.relu else None,
        lambda c, td: cl.layer(ca.LayerGradientXActivation, c, td),
    ),
    "nt_vargrad": Row(
        lambda c: NoiseTunnel(
            Saliency(c.target, abs=False), kind="vargrad", n_samples=N_NT, stdev=STDEV, seed=SEED
        ),
        _cap_nt,
        random=True,
    ),
    "smoothgrad": Row(
        lambda c: SmoothGrad(c.target, kind="vargrad", n_samples=N_NT, stdev=STDEV, seed=SEED),
        _cap_nt,
        random=True,
    ),
    "gradient_shap": Row(
        lambda c: GradientSHAP(
            c.target, n_samples=N_NT, stdev=STDEV, seed=SEED, baselines=cl.reference_set(c)
        ),
        _cap_shap,
        random=True,
    ),
    "guided": Row(lambda c: GuidedBackprop(c.target) if c.relu else None, _cap(ca.GuidedBackprop)),
    "deconvolution": Row(lambda c: Deconvolution(c.target) if c.relu else None, _cap(ca.Deconvolution)),
    "deeplift": Row(lambda c: DeepLift(c.target) if c.relu else None, _cap(ca.DeepLift)),
    "deeplift_shap": Row(
        lambda c: DeepLiftShap(c.target, baselines=cl.reference_set(c)) if c.relu else None, cl.deeplift_shap
    ),
    "gradcam": Row(lambda c: GradCAM(c.target, layers=c.conv) if c.conv else None, _cap_gradcam),
    "gradcam_channels": Row(
        lambda c: GradCAM(c.target, layers=c.conv, sum_channels=False, relu=False) if c.conv else None,
        cl.gradcam_channels,
    ),
    "guided_gradcam": Row(
        lambda c: GuidedGradCAM(c.target, layers=c.conv) if c.conv else None, cl.guided_gradcam
    ),
    "occlusion": Row(
        lambda c: Occlusion(
            c.target,
            window={k: _window(s) for k, s in c.shapes.items()},
            strides={k: _stride(s) for k, s in c.shapes.items()},
        ),
        _cap_occlusion,
        tol=1e-6,  # captum returns occlusion maps in float32
    ),
    "feature_ablation": Row(lambda c: FeatureAblation(c.target, feature_mask=_masks(c)), _cap_ablation),
    "shapley_sampling": Row(
        lambda c: ShapleyValueSampling(
            c.target, n_samples=cp.N_SHAPLEY, seed=cp.SEED, feature_mask=cp.contiguous_masks(c)
        ),
        cp.shapley_sampling,
        tol=1e-6,  # captum accumulates Shapley values in float32
    ),
    "shapley_exact": Row(
        lambda c: ShapleyValues(c.target, feature_mask=cp.contiguous_masks(c, coarse=True)),
        cp.shapley_exact,
        tol=2e-5,  # captum sums F * F! float32 terms (float64 checks: test_attr_shapley.py)
    ),
    "kernel_shap": Row(
        lambda c: KernelShap(
            c.target, n_samples=cp.N_LIME, seed=cp.SEED, feature_mask=cp.contiguous_masks(c)
        ),
        cp.kernel_shap,
        tol=1e-5,  # captum fits in float32
    ),
    "lime": Row(
        lambda c: Lime(
            c.target, n_samples=cp.N_LIME, seed=cp.SEED, alpha=0, feature_mask=cp.contiguous_masks(c)
        ),
        cp.lime_linear,
        tol=1e-5,
    ),
    "lime_lasso": Row(
        lambda c: Lime(
            c.target,
            n_samples=cp.N_LIME,
            seed=cp.SEED,
            alpha=cp.LASSO_ALPHA,
            feature_mask=cp.contiguous_masks(c),
        ),
        cp.lime_lasso,
        tol=1e-4,  # captum fits in float32; coordinate descent stops at sklearn's tolerance
    ),
    "feature_permutation": Row(
        lambda c: FeaturePermutation(c.target, seed=cp.SEED, feature_mask=cp.contiguous_masks(c)),
        cp.feature_permutation,
        random=True,
        min_batch=2,
    ),
    "perturbation": Row(lambda c: PerturbationSaliency(c.target), None),
    "attribution_patching": Row(lambda c: AttributionPatching(c.target, layers=c.layer), None),
    "lrp": Row(
        lambda c: LRP(c.target, composite=Composite([(POOLING, Norm(1e-9))], rule=Epsilon(1e-9))),
        _cap_lrp,
    ),
}


def _add_patched(td: TensorDict) -> None:
    """Patched inputs computed per example from the clean ones (so slicing the batch keeps them)."""
    for k in list(td.keys()):
        if k != "action" and td[k].is_floating_point():
            td["patched", k] = 0.3 - 0.5 * td[k].flip(-1)


def _products(case: Case, td: TensorDict, method) -> TensorDict:
    td = td.clone()
    if isinstance(method, AttributionPatching):
        _add_patched(td)
    with case.prepare(method) as hooked:
        return hooked(td)["attr"]


def _method(row: str, case_name: str) -> tuple[Case, object]:
    case = CASES[case_name]()
    method = ROWS[row].make(case)
    if method is None:
        pytest.skip(f"{row} does not apply to {case_name}")
    return case, method


def _map_keys(case: Case, row: str) -> list:
    on_layer = ("attribution_patching", "layer_ig_input", "ixg_layer_input", "conductance")
    layers = {"gradcam": [case.conv], "gradcam_channels": [case.conv]} | {r: [case.layer] for r in on_layer}
    return layers.get(row, case.keys())


@pytest.mark.parametrize("batch", [(5,), (2, 3), ()], ids=["b5", "b2x3", "b0"])
@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("row", list(ROWS))
def test_agrees_with_captum(row: str, case_name: str, batch: tuple) -> None:
    case, method = _method(row, case_name)
    if ROWS[row].captum is None:
        pytest.skip(f"captum has no {row}; checked against explicit references in test_attr_methods.py")
    if (
        batch != (5,)
        and row in ("lrp", "guided", "deconvolution", "gradcam", "gradcam_channels", "guided_gradcam")
        and case_name != "mlp"
    ):
        pytest.skip("batch-shape handling is method-independent; checked on the MLP")
    if batch == () and ROWS[row].min_batch > 1:
        pytest.skip(f"{row} needs a batch of {ROWS[row].min_batch}")
    td = case.td(batch)
    ours = _products(case, td, method)
    theirs = ROWS[row].captum(case, td)
    if theirs is None:
        pytest.skip(f"captum cannot run {row} on {case_name}")
    for k, ref in zip(_map_keys(case, row), theirs):
        got = ours[k]
        assert got.shape == (*batch, *ref.shape[1:]), (got.shape, ref.shape)
        torch.testing.assert_close(
            got.reshape(ref.shape), ref.to(got.dtype), rtol=ROWS[row].tol, atol=ROWS[row].tol
        )


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("row", [r for r in ROWS if not ROWS[r].random])
def test_batched_equals_one_by_one(row: str, case_name: str) -> None:
    case, method = _method(row, case_name)
    td = case.td((4,))
    together = _products(case, td, method)
    for i in range(4):
        alone = _products(case, td[i : i + 1], method)
        for k in _map_keys(case, row):
            torch.testing.assert_close(together[k][i : i + 1], alone[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("row", list(ROWS))
def test_chunked_equals_unchunked(row: str, case_name: str) -> None:
    case, method = _method(row, case_name)
    td = case.td((5,))
    whole = _products(case, td, method)
    method.options.chunk_size = 4
    chunked = _products(case, td, method)
    for k in _map_keys(case, row):
        torch.testing.assert_close(chunked[k], whole[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("row", list(ROWS))
def test_several_targets_in_one_call_equal_separate_runs(row: str, case_name: str) -> None:
    case, method = _method(row, case_name)
    td = case.td((3,))
    single = case.target

    def two(out):
        t = single(out)
        return TensorDict({"a": t, "b": t * t}, batch_size=out.batch_size)

    separate = {}
    for name, fn in (("a", single), ("b", lambda out: single(out) ** 2)):
        method.options.target = fn
        separate[name] = _products(case, td, method)
    for batched in (False, True):
        method.options.target, method.options.batched = two, batched
        maps = _products(case, td, method)
        for name in ("a", "b"):
            for k in _map_keys(case, row):
                torch.testing.assert_close(maps[name, k], separate[name][k], rtol=1e-10, atol=1e-12)
