"""LRP runs one forward of the model per call (per chunk): the target's value that relevance is checked
against comes from the forward the gradient took. Counted with a forward pre-hook on the model; the values
it reuses are checked against a plain forward (conservation gap, ``start="gradient"`` scaling)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

import rlhook
from rlhook.attribution.lrp import LRP, Composite, ConceptRelevance, Epsilon
from tests.models import MLP

DT = torch.float64


def target(out):
    return out["output"][..., 2]


class Counter:
    """Counts the calls of ``model`` (its forward pre-hook) while in use."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.calls = model, 0

    def __enter__(self) -> Counter:
        self.handle = self.model.register_forward_pre_hook(self._count)
        return self

    def _count(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(4)
    return MLP(depth=4).to(DT)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(6, 16, generator=torch.Generator().manual_seed(5), dtype=DT)


def _explain(method, model, x, calls: int) -> TensorDict:
    with method.prepare(model) as hooked, Counter(model) as counter:
        out = hooked(TensorDict({"input": x}, [len(x)]))
    assert counter.calls == calls, f"{counter.calls} forwards of the model, expected {calls}"
    assert rlhook.hook_count(model) == 0
    return out


@pytest.mark.parametrize("chunk_size,calls", [(None, 1), (2, 3), (4, 2)])
def test_one_forward_per_call_or_chunk(model, x, chunk_size, calls):
    out = _explain(LRP(target, chunk_size=chunk_size), model, x, calls)
    # the gap is taken against the target's value of a plain forward, example by example
    f = target({"output": model(x)}).detach()
    torch.testing.assert_close(out["attr_delta"], out["attr", "input"].sum(-1) - f)
    assert out["attr_delta"].abs().max() > 1e-3  # biases absorb relevance: the gap is not trivially zero
    whole = _explain(LRP(target), model, x, 1)
    torch.testing.assert_close(out["attr", "input"], whole["attr", "input"])


def test_gradient_start_scales_by_the_value_of_the_same_forward(model, x):
    """On a single output unit both starts give the same relevance; "gradient" multiplies by the target's
    value, so a wrong or misaligned value (e.g. chunks out of order) would show."""
    composite = Composite(rule=Epsilon(1e-9))
    out = _explain(LRP(target, composite=composite, start="output"), model, x, 1)
    grad = _explain(LRP(target, composite=composite, start="gradient", chunk_size=4), model, x, 2)
    torch.testing.assert_close(grad["attr", "input"], out["attr", "input"])
    torch.testing.assert_close(grad["attr_delta"], out["attr_delta"])


@pytest.mark.parametrize("start", ["output", "gradient"])
def test_concept_relevance_reuses_the_values_too(model, x, start):
    """CRP: a probe of the layer's shape on one example, then the one forward of the gradient."""
    crp = ConceptRelevance(target, layer="layers.2", concepts=[[0, 1, 2], [3]], start=start)
    out = _explain(crp, model, x, 2)
    f = target({"output": model(x)}).detach()
    torch.testing.assert_close(out["crp_delta"], out["crp", "input"].sum((1, 2)) - f)
