"""Per-method checks beyond the matrix: degenerate cases, equivalences between methods, explicit references
(perturbation saliency, attribution patching vs real patching) and the errors users see."""

from __future__ import annotations

import math

import captum.attr as ca
import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

import rlhook
from rlhook import HookedModule, MissingKeyError
from rlhook.attribution import (
    AttributionPatching,
    ExpectedGradients,
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
    VarGrad,
)
from rlhook.attribution.noise_tunnel import draw_noise
from tests.attribution.attr_cases import captum_noise
from tests.models import CNN, MLP, two_input_td_module

DT = torch.float64


def _mlp_td(batch: int = 4, seed: int = 0) -> tuple[nn.Module, TensorDict]:
    torch.manual_seed(seed)
    return MLP().to(DT), TensorDict({"input": torch.randn(batch, 16, dtype=DT)}, [batch])


def _run(method, model, td, **kw) -> TensorDict:
    with method.prepare(model, **kw) as hooked:
        return hooked(td.clone())


T1 = lambda o: o["output"][..., 1]  # noqa: E731


@pytest.mark.parametrize("kind", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_equals_noise_tunnel_over_signed_saliency(kind: str) -> None:
    m, td = _mlp_td()
    direct = _run(SmoothGrad(T1, kind=kind, n_samples=5, stdev=0.4, seed=2, chunk_size=6), m, td)
    tunnel = _run(NoiseTunnel(Saliency(T1, abs=False), kind=kind, n_samples=5, stdev=0.4, seed=2), m, td)
    torch.testing.assert_close(direct["attr", "input"], tunnel["attr", "input"], rtol=1e-12, atol=1e-14)
    assert type(VarGrad(T1)).kind == "vargrad"


def test_smoothgrad_with_zero_noise_is_the_gradient() -> None:
    m, td = _mlp_td()
    sg = _run(SmoothGrad(T1, n_samples=1, stdev=0.0), m, td)["attr", "input"]
    sal = _run(Saliency(T1, abs=False), m, td)["attr", "input"]
    torch.testing.assert_close(sg, sal, rtol=0, atol=0)
    var = _run(VarGrad(T1, n_samples=3, stdev=0.0), m, td)["attr", "input"]
    assert var.abs().max() < 1e-15


def test_noise_tunnel_over_ig_matches_captum_and_keeps_targets_apart() -> None:
    m, td = _mlp_td()
    x = td["input"]
    noise = draw_noise({"input": x}, 3, 0.2, 9)
    with captum_noise(noise, ["input"]):
        ref = ca.NoiseTunnel(ca.IntegratedGradients(m)).attribute(
            x, nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.2, target=1, n_steps=6
        )
    ig = IntegratedGradients(T1, n_steps=6, chunk_size=5)
    got = _run(NoiseTunnel(ig, kind="smoothgrad_sq", n_samples=3, stdev=0.2, seed=9), m, td)["attr", "input"]
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-10)
    many = lambda o: TensorDict({"a": o["output"][..., 0], "b": o["output"][..., 1]}, o.batch_size)  # noqa: E731
    both = _run(NoiseTunnel(Saliency(many), n_samples=3, stdev=0.2, seed=9), m, td)
    one = _run(NoiseTunnel(Saliency(T1), n_samples=3, stdev=0.2, seed=9), m, td)
    torch.testing.assert_close(both["attr", "b", "input"], one["attr", "input"], rtol=1e-12, atol=1e-14)


def test_gradient_shap_is_exactly_additive_on_a_linear_model() -> None:
    torch.manual_seed(3)
    lin = nn.Linear(6, 1).to(DT)
    x = torch.randn(5, 6, dtype=DT)
    refs = torch.randn(4, 6, dtype=DT)
    out = _run(
        GradientSHAP("output", n_samples=7, baselines=refs, delta=True), lin, TensorDict({"input": x}, [5])
    )
    assert out["attr_delta"].abs().max() < 1e-12
    assert out["attr", "input"].shape == (5, 6)


def test_gradient_shap_reads_per_example_distributions_from_the_tensordict() -> None:
    m, td = _mlp_td()
    dist = torch.randn(4, 3, 16, dtype=DT)  # batch + (S,) + input shape
    td["baseline", "input"] = dist
    got = _run(GradientSHAP(T1, n_samples=6, seed=1), m, td)["attr", "input"]
    # the same draws by hand: example i uses dist[i, index[i, j]] at alpha[i, j]
    from rlhook.attribution.gradient_shap import shap_draws

    index, alpha = shap_draws(4, 6, 3, 1, DT)
    expected = torch.zeros(4, 16, dtype=DT)
    for i in range(4):
        for j in range(6):
            b = dist[i, index[i, j]]
            z = (b + alpha[i, j] * (td["input"][i] - b)).requires_grad_(True)
            (g,) = torch.autograd.grad(m(z[None])[0, 1], z)
            expected[i] += g * (td["input"][i] - b) / 6
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    td["baseline", "input"] = torch.randn(4, 3, 15, dtype=DT)
    with pytest.raises(ValueError, match=r"\(4, 3, 15\).*\(4, 16\)"):
        _run(GradientSHAP(T1), m, td)


def test_expected_gradients_use_the_batch_as_baselines() -> None:
    m, td = _mlp_td()
    eg = _run(ExpectedGradients(T1, n_samples=5, seed=4), m, td)["attr", "input"]
    gs = _run(GradientSHAP(T1, n_samples=5, seed=4, baselines=td["input"]), m, td)["attr", "input"]
    torch.testing.assert_close(eg, gs, rtol=0, atol=0)


def test_feature_ablation_per_example_masks_and_errors() -> None:
    m, td = _mlp_td()
    masks = torch.stack(
        [torch.arange(16) // 4, torch.arange(16) % 2, torch.zeros(16, dtype=torch.long), torch.arange(16)]
    )
    got = _run(FeatureAblation(T1, feature_mask=masks, chunk_size=5), m, td)["attr", "input"]
    for i in range(4):
        ref = ca.FeatureAblation(m).attribute(td["input"][i : i + 1], target=1, feature_mask=masks[i : i + 1])
        torch.testing.assert_close(got[i : i + 1], ref, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="integer ids"):
        _run(FeatureAblation(T1, feature_mask=torch.zeros(16)), m, td)
    with pytest.raises(ValueError, match="broadcasts neither"):
        _run(FeatureAblation(T1, feature_mask=torch.zeros(15, dtype=torch.long)), m, td)


def test_occlusion_errors() -> None:
    m, td = _mlp_td()
    with pytest.raises(ValueError, match="fit in one example"):
        _run(Occlusion(T1, window=(17,)), m, td)
    with pytest.raises(ValueError, match="strides"):
        _run(Occlusion(T1, window=(2,), strides=3), m, td)
    with pytest.raises(ValueError, match="one entry per dim"):
        _run(Occlusion(T1, window=(2, 2)), m, td)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Reference 2-D Gaussian blur (full 2-D kernel, replicate padding) of (N, C, H, W)."""
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    k = (k / k.sum()).expand(x.shape[1], 1, -1, -1)
    return F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), k, groups=x.shape[1])


def test_perturbation_saliency_matches_an_explicit_loop() -> None:
    torch.manual_seed(5)
    m = CNN().to(DT)
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    both = lambda o: TensorDict({"policy": o["output"][..., :4], "value": o["output"][..., 4]}, o.batch_size)  # noqa: E731
    method = PerturbationSaliency(both, sigma=1.5, stride=1, blur_sigma=1.0, chunk_size=37)
    got = _run(method, m, TensorDict({"input": x}, [2]))
    blurred = _blur(x, 1.0)
    clean = m(x).detach()
    yy, xx = torch.meshgrid(torch.arange(8, dtype=DT), torch.arange(8, dtype=DT), indexing="ij")
    centres = [(i, j) for i in range(8) for j in range(8)]
    masks = torch.stack([torch.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * 1.5**2)) for i, j in centres])
    pert = m(
        (x[:, None] * (1 - masks[None, :, None]) + blurred[:, None] * masks[None, :, None]).reshape(
            -1, 3, 8, 8
        )
    )
    pert = pert.detach().reshape(2, 64, 5)
    s_pol = 0.5 * ((clean[:, None, :4] - pert[..., :4]) ** 2).sum(-1)  # (2, 64)
    s_val = 0.5 * (clean[:, None, 4] - pert[..., 4]) ** 2
    torch.testing.assert_close(
        got["attr", "policy", "input"][:, 0].reshape(2, 64), s_pol, rtol=1e-9, atol=1e-14
    )
    torch.testing.assert_close(
        got["attr", "value", "input"][:, 1].reshape(2, 64), s_val, rtol=1e-9, atol=1e-14
    )
    # a coarse grid is upsampled to the image size
    coarse = _run(PerturbationSaliency(both, stride=4), m, TensorDict({"input": x}, [2]))
    assert coarse["attr", "policy", "input"].shape == (2, 3, 8, 8)


def test_perturbation_saliency_on_vector_observations() -> None:
    m = two_input_td_module().to(DT)
    torch.manual_seed(6)
    td = TensorDict({"obs": torch.randn(3, 6, dtype=DT), "goal": torch.randn(3, 3, dtype=DT)}, [3])
    got = _run(PerturbationSaliency("state_value"), m, td)  # vectors: each feature to its baseline
    ref = _run(FeatureAblation("state_value"), m, td)
    for k in ("obs", "goal"):
        torch.testing.assert_close(got["attr", k], 0.5 * ref["attr", k] ** 2, rtol=1e-12, atol=1e-15)
    noisy = _run(PerturbationSaliency("state_value", mode="noise", noise_std=0.5, seed=1), m, td)
    again = _run(PerturbationSaliency("state_value", mode="noise", noise_std=0.5, seed=1), m, td)
    torch.testing.assert_close(noisy["attr", "obs"], again["attr", "obs"], rtol=0, atol=0)


def test_attribution_patching_against_real_patching() -> None:
    m, td = _mlp_td()
    patched = torch.randn(4, 16, dtype=DT)
    td["patched", "input"] = patched
    est = _run(AttributionPatching(T1, layers=["layers.2", "layers.1"]), m, td)
    per_module = _run(AttributionPatching(T1, layers=["layers.2", "layers.1"], per="module"), m, td)
    torch.testing.assert_close(per_module["attr", "layers.1"], est["attr", "layers.1"].sum(-1))
    # the head is linear after layers.2: the first-order estimate is exact there
    hooked = HookedModule(m)
    with hooked.run(TensorDict({"input": patched}, [4])) as run:
        source = run.save("layers.2")
    with hooked.run(TensorDict({"input": td["input"]}, [4])) as run:
        run.set("layers.2", source)
    exact = (run.output["output"][:, 1] - m(td["input"])[:, 1]).detach()
    torch.testing.assert_close(per_module["attr", "layers.2"], exact, rtol=1e-10, atol=1e-12)
    # inputs are patched the same way: (patched - clean) * gradient
    inp = _run(AttributionPatching(T1, inputs=["input"]), m, td)["attr", "input"]
    grad = _run(Saliency(T1, abs=False), m, td)["attr", "input"]
    torch.testing.assert_close(inp, (patched - td["input"]) * grad)
    assert rlhook.hook_count(m) == 0
    with pytest.raises(MissingKeyError, match="patched"):
        _run(AttributionPatching(T1, layers="layers.1"), m, TensorDict({"input": td["input"]}, [4]))


class ChannelsLast(nn.Module):
    """CNN whose conv2 output is seen channels-last by Grad-CAM (a permute module after it)."""

    def __init__(self, cnn: CNN) -> None:
        super().__init__()
        self.cnn = cnn
        self.to_nhwc = Permute((0, 2, 3, 1))
        self.to_nchw = Permute((0, 3, 1, 2))

    def forward(self, x):
        c = self.cnn
        h = self.to_nchw(self.to_nhwc(c.conv2(c.relu1(c.conv1(x)))))
        return c.fc(c.pool(c.relu2(h)).flatten(1))


class Permute(nn.Module):
    def __init__(self, dims: tuple) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def test_gradcam_channel_dims_and_pooling() -> None:
    torch.manual_seed(7)
    cnn = CNN().to(DT)
    td = TensorDict({"input": torch.randn(2, 3, 8, 8, dtype=DT)}, [2])
    t = lambda o: o["output"][..., 0]  # noqa: E731
    nchw = _run(GradCAM(t, layers="conv2"), cnn, td)["attr", "conv2"]
    nhwc = _run(GradCAM(t, layers="to_nhwc", channel_dim=-1), ChannelsLast(cnn), td)["attr", "to_nhwc"]
    torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), nchw)
    mean = _run(GradCAM(t, layers="conv2", relu=False), cnn, td)["attr", "conv2"]
    total = _run(GradCAM(t, layers="conv2", relu=False, pooling="sum"), cnn, td)["attr", "conv2"]
    torch.testing.assert_close(total, mean * 64)
    with pytest.raises(ValueError, match="needs layers"):
        GradCAM(t)
    # upsampled to the observation for overlays: captum's LayerAttribution.interpolate
    out = _run(GradCAM(t, layers="pool", upsample_to="input"), cnn, td)
    ref = ca.LayerGradCam(cnn, cnn.pool).attribute(td["input"], target=0, relu_attributions=True)
    torch.testing.assert_close(out["attr", "pool"], ref)
    up = ca.LayerAttribution.interpolate(ref, (8, 8), interpolate_mode="bilinear")
    torch.testing.assert_close(out["attr", "input"], up.expand(2, 3, 8, 8))


def test_guided_backprop_needs_relu_modules_and_restores_inplace() -> None:
    with pytest.raises(ValueError, match="no .*ReLU"):
        _run(
            GuidedBackprop("state_value"),
            two_input_td_module().to(DT),
            TensorDict({"obs": torch.randn(2, 6, dtype=DT), "goal": torch.randn(2, 3, dtype=DT)}, [2]),
        )
    torch.manual_seed(8)
    m = MLP(act=lambda: nn.ReLU(inplace=True)).to(DT)
    td = TensorDict({"input": torch.randn(3, 16, dtype=DT)}, [3])
    got = _run(GuidedBackprop(T1), m, td)["attr", "input"]
    ref = ca.GuidedBackprop(m).attribute(td["input"], target=1)
    torch.testing.assert_close(got, ref)
    assert all(mod.inplace for mod in m.modules() if isinstance(mod, nn.ReLU))
    assert rlhook.hook_count(m) == 0


def test_feature_ids_shared_across_inputs_are_ablated_together() -> None:
    m = two_input_td_module().to(DT)
    torch.manual_seed(9)
    td = TensorDict({"obs": torch.randn(3, 6, dtype=DT), "goal": torch.randn(3, 3, dtype=DT)}, [3])
    masks = {"obs": torch.tensor([0, 0, 1, 1, 2, 2]), "goal": torch.tensor([2, 1, 0])}
    got = _run(FeatureAblation(lambda o: o["logits"][..., 1], feature_mask=masks, chunk_size=4), m, td)
    f = lambda obs, goal: m.module(obs, goal)[0]  # noqa: E731
    ref = ca.FeatureAblation(f).attribute(
        (td["obs"], td["goal"]), target=1, feature_mask=(masks["obs"][None], masks["goal"][None])
    )
    torch.testing.assert_close(got["attr", "obs"], ref[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got["attr", "goal"], ref[1], rtol=1e-12, atol=1e-14)


def test_noise_tunnel_keeps_the_gap_of_every_noisy_copy_as_captum() -> None:
    m, td = _mlp_td(3)
    x = td["input"]
    noise = draw_noise({"input": x}, 4, 0.2, 9)
    with captum_noise(noise, ["input"]):
        ref, gap = ca.NoiseTunnel(ca.IntegratedGradients(m)).attribute(
            x, nt_samples=4, stdevs=0.2, target=1, n_steps=6, return_convergence_delta=True
        )
    tunnel = NoiseTunnel(IntegratedGradients(T1, n_steps=6), n_samples=4, stdev=0.2, seed=9, delta=True)
    out = _run(tunnel, m, td)
    torch.testing.assert_close(out["attr", "input"], ref, rtol=1e-6, atol=1e-9)
    assert out["attr_delta"].shape == (3, 4)
    torch.testing.assert_close(out["attr_delta"].reshape(-1), gap, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="computes a gap"):
        _run(NoiseTunnel(Saliency(T1), n_samples=2, delta=True), m, td)
