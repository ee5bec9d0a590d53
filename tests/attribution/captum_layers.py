"""Captum references for the layer and rescale rows of the matrix (layer inputs, conductance, per-channel and
guided Grad-CAM, DeepLiftShap) and the reference set the SHAP rows share."""

from __future__ import annotations

import captum.attr as ca
import torch
from tensordict import TensorDict

from tests.attribution.attr_cases import Case, flat_inputs


def _tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def reference_set(case: Case) -> dict:
    gen = torch.Generator().manual_seed(11)
    return {k: torch.randn(3, *s, generator=gen, dtype=torch.float64) for k, s in case.shapes.items()}


def layer(cls, case: Case, td: TensorDict, **kw) -> tuple:
    """A captum layer method on ``case.layer`` (its input unless ``attribute_to_layer_input=False``)."""
    kw = {"attribute_to_layer_input": True} | kw
    module = case.model.get_submodule(case.layer)
    return _tuple(
        cls(case.captum_forward, module).attribute(flat_inputs(case, td), target=case.captum_target, **kw)
    )


def deeplift_shap(case: Case, td: TensorDict) -> tuple:
    refs = reference_set(case)
    out = ca.DeepLiftShap(case.captum_forward).attribute(
        flat_inputs(case, td), baselines=tuple(refs[k] for k in case.keys()), target=case.captum_target
    )
    return _tuple(out)


def gradcam_channels(case: Case, td: TensorDict) -> tuple:
    conv = case.model.get_submodule(case.conv)
    out = ca.LayerGradCam(case.captum_forward, conv).attribute(
        flat_inputs(case, td), target=case.captum_target, attr_dim_summation=False
    )
    return _tuple(out)


def guided_gradcam(case: Case, td: TensorDict) -> tuple:
    conv = case.model.get_submodule(case.conv)
    return _tuple(
        ca.GuidedGradCam(case.captum_forward, conv).attribute(
            flat_inputs(case, td), target=case.captum_target
        )
    )
