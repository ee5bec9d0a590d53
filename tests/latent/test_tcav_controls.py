"""TCAV with concept and random sets of any size, random-vs-random controls and the t-test (Kim et al.)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

import rlhook
from rlhook.latent import TCAV

pytest.importorskip("sklearn")
pytest.importorskip("scipy")


def _model() -> torch.nn.Module:
    """Layer "1" sees the input itself; the read-out after it is nonlinear (gradients differ per example)."""
    torch.manual_seed(6)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 5),
        torch.nn.Identity(),
        torch.nn.Linear(5, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 1),
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(5)), model[0].bias.zero_()
    return model


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randoms(n_sets: int) -> list[torch.Tensor]:
    return [torch.randn(20 + 3 * i, 5, generator=_gen(100 + i)) for i in range(n_sets)]


def _inputs() -> torch.Tensor:
    return 0.5 * torch.randn(9, 5, generator=_gen(2))


def _direction(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The mean gradient of the output at layer "1" (= at the input) over ``x``."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x)
    return g.mean(0) / g.mean(0).norm()


def _run(model, x, **kw):
    with TCAV("1", "output", **kw).prepare(model) as hooked:
        out = hooked(TensorDict({"input": x}, batch_size=x.shape[:1]))
        runs = hooked.state.cav_runs["1"]
    assert rlhook.hook_count(model) == 0
    return out, runs


def test_encoded_concept_is_significant_against_random_controls():
    model, x = _model(), _inputs()
    concept = torch.randn(45, 5, generator=_gen(3)) + 3 * _direction(model, x)  # 45 examples, 9 inputs
    out, runs = _run(model, x, concept=concept, randoms=_randoms(10))
    assert runs.shape == (10, 5)
    assert out["probe", "1", "tcav_runs"].shape == (9, 10) and out["probe", "1", "tcav_controls"].shape == (
        9,
        10,
    )
    assert out["probe", "1", "tcav"][0] > 0.95 and out["probe", "1", "tcav_runs"][0].min() > 0.85
    assert out["probe", "1", "tcav_p_value"][0] < 0.01  # Kim et al. reject at 0.05
    for cav in runs:  # every CAV (concept vs one random set) points along the concept's direction
        assert torch.nn.functional.cosine_similarity(cav, _direction(model, x), dim=0) > 0.8


def test_a_concept_drawn_like_the_randoms_is_not_significant():
    model, x = _model(), _inputs()
    out, _ = _run(model, x, concept=torch.randn(45, 5, generator=_gen(4)), randoms=_randoms(10))
    assert out["probe", "1", "tcav_p_value"][0] > 0.05
    controls = out["probe", "1", "tcav_controls"][0]
    assert 0.0 < controls.mean() < 1.0  # the controls spread: random CAVs point anywhere


def test_sets_given_apart_equal_the_batch_aligned_keys():
    model, x = _model(), _inputs()
    pos, neg = torch.randn(9, 5, generator=_gen(5)) + 2.0, torch.randn(9, 5, generator=_gen(6))
    apart, runs = _run(model, x, concept=pos, randoms=[neg])
    td = TensorDict({"input": x, ("positive", "input"): pos, ("negative", "input"): neg}, batch_size=[9])
    with TCAV("1", "output").prepare(model) as hooked:
        aligned = hooked(td)
        cav = hooked.state.cavs["1"]
    torch.testing.assert_close(runs[0], cav)
    for key in ("tcav", "cav_accuracy", "cav_derivative"):
        torch.testing.assert_close(apart["probe", "1", key], aligned["probe", "1", key])
    assert torch.isnan(apart["probe", "1", "tcav_p_value"]).all()  # one random set: no test


def test_bad_sets():
    with pytest.raises(ValueError, match="both concept"):
        TCAV("1", "output", concept=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="both concept"):
        TCAV("1", "output", concept=torch.zeros(3, 5), randoms=[])
    model = _model()
    with pytest.raises(TypeError, match="non-empty"):
        _run(model, _inputs(), concept=torch.zeros(0, 5), randoms=_randoms(2))
    assert rlhook.hook_count(model) == 0
