"""Image baselines: closed-form cases (constant images, a point under a Gaussian blur) and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from rlhook.adapters.vision import image_baseline
from rlhook.attribution import IntegratedGradients


def test_black_and_mean():
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(image_baseline(x, "black"), torch.zeros_like(x))
    m = image_baseline(x, "mean")
    torch.testing.assert_close(m[:, :, 3, 5], x.mean(dim=(-2, -1)))
    assert m.shape == x.shape and torch.allclose(m.std(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-7)


def test_blur_keeps_constants_and_spreads_a_point_as_a_gaussian():
    const = torch.full((1, 2, 9, 9), 0.7)
    torch.testing.assert_close(image_baseline(const, "blur", sigma=1.5), const)
    point = torch.zeros(1, 1, 41, 41)
    point[0, 0, 20, 20] = 1.0
    b = image_baseline(point, "blur", sigma=2.0)[0, 0]
    torch.testing.assert_close(b.sum(), torch.tensor(1.0))
    ratio = b[20, 22] / b[20, 20]  # two pixels away: exp(-2^2 / (2 sigma^2))
    assert math.isclose(float(ratio), math.exp(-0.5), rel_tol=1e-4)
    assert image_baseline(torch.rand(4, 3, 3, 16, 16), "blur").shape == (4, 3, 3, 16, 16)


def test_noise_is_seeded_with_the_asked_spread():
    x = torch.rand(4, 3, 32, 32)
    a, b = image_baseline(x, "noise", std=0.2, seed=1), image_baseline(x, "noise", std=0.2, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, image_baseline(x, "noise", std=0.2, seed=2))
    assert abs(float((a - x).std()) - 0.2) < 0.01


def test_feeds_integrated_gradients():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x = torch.rand(2, 3, 8, 8)
    model(x)
    td = TensorDict({"input": x, ("baseline", "input"): image_baseline(x, "blur")}, batch_size=[2])
    with IntegratedGradients(target=lambda out: out["output"][..., 0], n_steps=16).prepare(model) as hooked:
        out = hooked(td)
    gap = out["attr", "input"].flatten(1).sum(1) - (model(x) - model(td["baseline", "input"]))[:, 0]
    assert gap.abs().max() < 1e-4  # completeness from the blurred image: the model is linear


@pytest.mark.parametrize(
    ("args", "match"),
    [((torch.rand(3, 8), "black"), "shaped"), ((torch.rand(1, 3, 8, 8), "sepia"), "unknown image baseline")],
)
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        image_baseline(*args)
