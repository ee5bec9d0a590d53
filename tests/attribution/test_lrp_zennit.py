"""LRP against zennit reference values (computed by tests/fixtures/make_zennit_fixtures.py in its own venv)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torch import nn

import rlhook
from rlhook.attribution.lrp import (
    LRP,
    AlphaBeta,
    Composite,
    Epsilon,
    Flat,
    Gamma,
    MergeBatchNorm,
    WSquare,
    ZPlus,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location("make_zennit_fixtures", FIXTURES / "make_zennit_fixtures.py")
zf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zf)

DATA = torch.load(FIXTURES / "zennit_lrp.pt", weights_only=True)

RULES = {
    "epsilon": lambda: Epsilon(1e-6),
    "gamma": lambda: Gamma(0.25),
    "zplus": lambda: ZPlus(),
    "alpha2beta1": lambda: AlphaBeta(2.0, 1.0),
    "flat": lambda: Flat(),
    "wsquare": lambda: WSquare(),
}
COMPOSITES = {
    "composite_epsilon_plus": Composite.epsilon_plus,
    "composite_epsilon_alpha2_beta1": Composite.epsilon_alpha2_beta1,
}


def _tol(name: str) -> dict:
    # zennit's batch-norm merge leaves the batch norm computing x / sqrt(1 + eps) (running stats reset to 0/1),
    # so its model output differs from the original by ~eps/2 = 5e-6 relative; ours is an exact identity.
    # (an example whose target is small relative to its summands shows it amplified: compare with an atol)
    return {"rtol": 2e-5, "atol": 1e-6} if name == "bn_mlp" else {"rtol": 1e-7, "atol": 1e-9}


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    model = zf.MODELS[name][0]().double().eval()
    model.load_state_dict(DATA[name]["state_dict"])
    return model, DATA[name]["input"]


def _relevance(model: nn.Module, x: torch.Tensor, composite: Composite, name: str) -> torch.Tensor:
    canon = [MergeBatchNorm()] if name == "bn_mlp" else []
    method = LRP(lambda out: out["output"][..., zf.TARGET], composite=composite, canonizers=canon)
    with method.prepare(model) as hooked:
        td = hooked(TensorDict({"input": x}, batch_size=x.shape[:1]))
    assert rlhook.hook_count(model) == 0
    return td["attr", "input"]


@pytest.mark.parametrize("name", list(zf.MODELS))
@pytest.mark.parametrize("rule", list(RULES))
def test_rule_matches_zennit(name: str, rule: str) -> None:
    model, x = _model(name)
    composite = Composite([(zf_types(), RULES[rule]())])
    ours = _relevance(model, x, composite, name)
    torch.testing.assert_close(ours, DATA[name]["relevance"][rule], **_tol(name))


@pytest.mark.parametrize("name", list(zf.MODELS))
@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_composite_matches_zennit(name: str, composite: str) -> None:
    model, x = _model(name)
    ours = _relevance(model, x, COMPOSITES[composite](), name)
    torch.testing.assert_close(ours, DATA[name]["relevance"][composite], **_tol(name))


def test_fixture_can_fail() -> None:
    """A different rule gives a different answer: the comparison above has teeth."""
    model, x = _model("mlp")
    ours = _relevance(model, x, Composite([(zf_types(), Epsilon())]), "mlp")
    assert not torch.allclose(ours, DATA["mlp"]["relevance"]["alpha2beta1"], atol=1e-3)


def zf_types() -> tuple[type, ...]:
    return (nn.Linear, nn.Conv2d)
