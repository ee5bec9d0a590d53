"""Captum references for the sampling perturbation methods of the matrix (Shapley sampling and exact, KernelShap,
Lime, FeaturePermutation), with the feature masks and seeds both sides share."""

from __future__ import annotations

import warnings

import captum.attr as ca
import torch
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression
from tensordict import TensorDict

from tests.attribution.attr_cases import Case, flat_inputs

SEED, N_SHAPLEY, N_LIME = 3, 3, 30
LASSO_ALPHA = 1e-4


def contiguous_masks(case: Case, coarse: bool = False) -> dict:
    """Feature ids ``0..F-1`` numbered input after input (captum counts ``max id + 1`` features): 4x4 patches
    per channel of an image (12 features), single elements of a vector. ``coarse`` (captum's exact Shapley
    values walk all ``F!`` orderings): 4x4 patches through all channels, and triples of a vector."""
    masks, offset = {}, 0
    for k, s in case.shapes.items():
        if len(s) == 3:
            cells = torch.arange(s[0] * 4).reshape(s[0], 2, 2)
            if coarse:
                cells = torch.arange(4).reshape(1, 2, 2).expand(s[0], 2, 2)
            m = cells.repeat_interleave(s[1] // 2, 1).repeat_interleave(s[2] // 2, 2)
        else:
            m = torch.arange(s[0]) // (3 if coarse else 1)
        masks[k] = m + offset
        offset = int(masks[k].max()) + 1
    return masks


def _call(case: Case, td: TensorDict, method, coarse: bool = False, **kw) -> tuple:
    xs = flat_inputs(case, td)
    masks = contiguous_masks(case, coarse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = method.attribute(
            xs,
            target=case.captum_target,
            additional_forward_args=case.extra(td) or None,
            feature_mask=tuple(masks[k].unsqueeze(0) for k in case.keys()),
            **kw,
        )
    return out if isinstance(out, tuple) else (out,)


def shapley_sampling(case: Case, td: TensorDict) -> tuple:
    torch.manual_seed(SEED)
    return _call(case, td, ca.ShapleyValueSampling(case.captum_forward), n_samples=N_SHAPLEY)


def shapley_exact(case: Case, td: TensorDict) -> tuple:
    return _call(case, td, ca.ShapleyValues(case.captum_forward), coarse=True)


def feature_permutation(case: Case, td: TensorDict) -> tuple:
    torch.manual_seed(SEED)
    return _call(case, td, ca.FeaturePermutation(case.captum_forward))


def _per_example(case: Case, td: TensorDict, make) -> tuple:
    """Captum's Lime draws anew for each example; rlhook shares one draw: reseed before each example."""
    flat = td.reshape(-1) if td.batch_dims else td.unsqueeze(0)
    parts = []
    for i in range(flat.batch_size[0]):
        torch.manual_seed(SEED)
        parts.append(_call(case, flat[i : i + 1], make(), n_samples=N_LIME))
    return tuple(torch.cat(p) for p in zip(*parts))


def kernel_shap(case: Case, td: TensorDict) -> tuple:
    return _per_example(case, td, lambda: ca.KernelShap(case.captum_forward))


def lime_linear(case: Case, td: TensorDict) -> tuple:
    return _per_example(case, td, lambda: ca.Lime(case.captum_forward, SkLearnLinearRegression()))


def lime_lasso(case: Case, td: TensorDict) -> tuple:
    return _per_example(case, td, lambda: ca.Lime(case.captum_forward, SkLearnLasso(alpha=LASSO_ALPHA)))
