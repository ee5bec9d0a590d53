"""Defects an independent check found, each against an oracle: captum's LayerIntegratedGradients for layer IG
from token ids, conservation and linearity for LRP of multi-unit targets; and the guards a new user hit."""

from __future__ import annotations

import captum.attr as ca
import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rlhook.attribution import GradCAM, IntegratedGradients, Saliency
from rlhook.attribution.lrp import LRP
from rlhook.latent import ActivationPatching
from tests.models import MLP


@pytest.fixture
def embed_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 1)).double()


def test_layer_ig_from_token_ids_matches_captum(embed_net):
    ids = torch.tensor([[1, 2, 3], [4, 5, 9]])
    pad = torch.zeros_like(ids)
    td = TensorDict({"input": ids, ("baseline", "input"): pad}, [2])
    for inputs in (None, ["input"], []):  # the int input's baseline is read whatever inputs= says
        opts = {} if inputs is None else {"inputs": inputs}
        with IntegratedGradients("output", layers=["0"], n_steps=50, **opts).prepare(embed_net) as hooked:
            out = hooked(td.clone())
        ref = ca.LayerIntegratedGradients(embed_net, embed_net[0]).attribute(
            ids, baselines=pad, target=0, n_steps=50, method="gausslegendre"
        )
        torch.testing.assert_close(out["attr", "0"], ref)
        assert out["attr", "0"].abs().sum() > 0
        torch.testing.assert_close(out["attr_delta"], torch.zeros(2, dtype=torch.float64), atol=1e-8, rtol=0)


def test_layer_ig_from_token_ids_without_a_baseline_says_what_to_add(embed_net):
    td = TensorDict({"input": torch.tensor([[1, 2, 3]])}, [1])
    with IntegratedGradients("output", layers=["0"]).prepare(embed_net) as hooked:
        with pytest.raises(ValueError, match=r"\('baseline', 'input'\)"):
            hooked(td)
    with Saliency("output").prepare(embed_net) as hooked:
        with pytest.raises(ValueError, match=r"layers=\['<embedding path>'\]"):
            hooked(td)


@pytest.fixture
def relu_net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False)).double()


@pytest.mark.parametrize("units", [[0, 1], [0, 1, 2]])
def test_lrp_of_a_multi_unit_target_conserves_and_is_linear(relu_net, units):
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    td = TensorDict({"input": x}, [6])
    y = relu_net(x)
    with LRP(lambda o: o["output"][:, units].sum(-1), conservation=1e-4).prepare(relu_net) as hooked:
        many = hooked(td.clone())
    torch.testing.assert_close(
        many["attr", "input"].sum(-1), y[:, units].sum(-1), rtol=1e-4, atol=1e-6
    )  # relevance sums to the target
    singles = []
    for u in units:
        with LRP(lambda o, u=u: o["output"][:, u]).prepare(relu_net) as hooked:
            singles.append(hooked(td.clone())["attr", "input"])
    torch.testing.assert_close(
        many["attr", "input"], sum(singles)
    )  # relevance of a sum: the sum of relevances


def test_guards_a_new_user_hit():
    td = TensorDict({"input": torch.randn(3, 16)}, [3])
    with GradCAM(lambda o: o["output"][:, 0], layers="layers.0").prepare(MLP()) as hooked:
        with pytest.raises(ValueError, match="no spatial dims"):
            hooked(td.clone())
    with pytest.raises(TypeError, match=r"\('baseline', k\)"):
        IntegratedGradients("output", baselines=torch.zeros(16))
    with Saliency(lambda o: o["output"][:, 0].detach()).prepare(MLP()) as hooked:
        with pytest.raises(RuntimeError, match="the target does not depend"):
            hooked(td.clone())
    td["patched", "input"] = torch.randn(3, 16)
    with ActivationPatching("layers.0", lambda o: o["output"][:, 0]).prepare(MLP()) as hooked:
        out = hooked(td.clone())
    assert (
        out["patch_effect", "layers.0"].grad_fn is None and out["patch", "layers.0", "output"].grad_fn is None
    )


def test_lrp_starts_agree_on_one_unit(relu_net):
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    td = TensorDict({"input": x}, [4])
    maps = {}
    for start in ("output", "gradient"):
        with LRP(lambda o: o["output"][:, 1], start=start).prepare(relu_net) as hooked:
            maps[start] = hooked(td.clone())["attr", "input"]
    torch.testing.assert_close(maps["output"], maps["gradient"])
    with pytest.raises(ValueError, match="start must be"):
        LRP("output", start="zeros")


def test_noise_tunnel_over_feature_ablation_with_a_mask_per_example():
    """The per-example mask rides in the TensorDict, so NoiseTunnel's noisy copies carry it: the result equals
    FeatureAblation averaged by hand over the same noisy inputs."""
    from rlhook.attribution import FeatureAblation, NoiseTunnel
    from rlhook.attribution.noise_tunnel import draw_noise

    torch.manual_seed(4)
    model = MLP().double()
    x = torch.randn(3, 16, dtype=torch.float64)
    masks = torch.stack([torch.arange(16) // (2 + i) for i in range(3)])  # a different grouping per example
    td = TensorDict({"input": x, ("feature_mask", "input"): masks}, [3])
    target = lambda o: o["output"][:, 0]  # noqa: E731
    with NoiseTunnel(FeatureAblation(target), n_samples=4, stdev=0.3, seed=2).prepare(model) as hooked:
        got = hooked(td.clone())["attr", "input"]
    noise = draw_noise({"input": x}, 4, 0.3, 2)["input"]  # (B, n, 16)
    by_hand = []
    for j in range(4):
        noisy = TensorDict({"input": x + noise[:, j], ("feature_mask", "input"): masks}, [3])
        with FeatureAblation(target).prepare(model) as hooked:
            by_hand.append(hooked(noisy)["attr", "input"])
    torch.testing.assert_close(got, torch.stack(by_hand).mean(0))
    with pytest.raises(ValueError, match=r"\('feature_mask', 'input'\)"):
        with FeatureAblation(target, feature_mask=masks[:2]).prepare(model) as hooked:
            hooked(TensorDict({"input": x}, [3]))
