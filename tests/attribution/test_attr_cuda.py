"""CPU and CUDA give the same maps, looped and batched VJPs alike (skipped without a GPU; run on an H200
with torch 2.11 for issue 3)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

import rlhook
from rlhook.attribution import (
    AttributionPatching,
    FeatureAblation,
    GradCAM,
    GradientSHAP,
    GuidedBackprop,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    PerturbationSaliency,
    Saliency,
    SmoothGrad,
)
from rlhook.attribution.lrp import LRP
from tests.models import CNN

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _many(o: TensorDict) -> TensorDict:
    return TensorDict({"a": o["output"][..., 1], "b": o["output"][..., 2]}, o.batch_size)


METHODS = {
    "saliency": lambda: Saliency(_many),
    "ig": lambda: IntegratedGradients(_many, n_steps=8, chunk_size=10),
    "smoothgrad": lambda: SmoothGrad(_many, n_samples=3, stdev=0.2, kind="vargrad"),
    "noise_tunnel": lambda: NoiseTunnel(Saliency(_many), n_samples=3, stdev=0.2),
    "gradient_shap": lambda: GradientSHAP(_many, n_samples=3, stdev=0.1, delta=True),
    "feature_ablation": lambda: FeatureAblation(
        _many, feature_mask=torch.arange(3)[:, None, None].expand(3, 8, 8).contiguous(), chunk_size=5
    ),
    "occlusion": lambda: Occlusion(_many, window=(3, 3, 3), strides=(1, 2, 2), chunk_size=7),
    "gradcam": lambda: GradCAM(_many, layers="conv2", upsample_to="input"),
    "guided": lambda: GuidedBackprop(_many),
    "perturbation": lambda: PerturbationSaliency(_many, stride=2, sigma=1.5, chunk_size=9),
    "attribution_patching": lambda: AttributionPatching(_many, layers="conv2"),
    "lrp": lambda: LRP(_many),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_cuda_matches_cpu(name: str) -> None:
    torch.manual_seed(0)
    reference = CNN().double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    results = {}
    for device in ("cpu", "cuda"):
        model = CNN().double()
        model.load_state_dict(reference.state_dict())
        model.to(device)
        td = TensorDict({"input": x, ("patched", "input"): x.flip(-1)}, [4]).to(device)
        for batched in (False, True):
            method = METHODS[name]()
            method.options.batched = batched
            with method.prepare(model) as hooked:
                results[device, batched] = hooked(td.clone())["attr"].cpu()
        assert rlhook.hook_count(model) == 0
    ref = results["cpu", False]
    for got in results.values():
        for k in ref.keys(True, True):
            torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-10)
