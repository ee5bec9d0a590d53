"""Lifecycle checks shared by the latent, weights and metrics tests."""

from __future__ import annotations

import torch
from torch import nn

from rlhook import hook_count


class Boom(RuntimeError):
    """Raised on purpose inside a prepare block or a model forward."""


def snapshot(model: nn.Module) -> tuple:
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        sorted(k for k, _ in model.named_modules()),
    )


def assert_unchanged(model: nn.Module, before: tuple) -> None:
    """Same weights bitwise, same flags, same submodules and no hook left."""
    state, training, grads, names = before
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v) and now[k].dtype == v.dtype, f"entry {k} changed"
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == grads
    assert sorted(k for k, _ in model.named_modules()) == names
    assert hook_count(model) == 0


def check_lifecycle(method, model: nn.Module, td, **prepare_kwargs) -> None:
    """The method leaves ``model`` unchanged after a successful call and after an exception in the block."""
    before = snapshot(model)
    with method.prepare(model, **prepare_kwargs) as hooked:
        hooked(td.clone())
    assert_unchanged(model, before)
    try:
        with method.prepare(model, **prepare_kwargs) as hooked:
            hooked(td.clone())
            raise Boom
    except Boom:
        pass
    assert_unchanged(model, before)
