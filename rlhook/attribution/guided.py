"""Guided Backpropagation (Springenberg et al., 2015): only positive gradients flow back through ReLUs; and
Deconvolution (Zeiler and Fergus, 2014): ReLUs pass back the positive part of their incoming gradient, ignoring
their forward mask."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.attribution.base import GradientMethod
from rlhook.hooks import Hooks
from rlhook.methods import Prepared
from rlhook.targets import Target

__all__ = ["Deconvolution", "GuidedBackprop"]


class GuidedBackprop(GradientMethod):
    """Gradient in which every ReLU module passes back only the positive part of its incoming gradient.

    A backward pre-hook on each module of type ``relu_types`` (registered through ``Hooks`` for the whole
    ``prepare`` block) clamps the gradient w.r.t. its output at 0; the ReLU's own backward then applies its
    mask. In-place ReLUs are switched to out-of-place inside the block and restored on exit. ReLUs called
    functionally (``F.relu``, ``torch.relu``) cannot be hooked: a model without ReLU modules is an error.

    Reads the attributed inputs; writes ``("attr", k)`` (or ``("attr", name, k)``), same shape as ``k``.
    """

    aggregate = True

    def __init__(
        self,
        target: Target | None = None,
        *,
        relu_types: type[nn.Module] | tuple[type[nn.Module], ...] = nn.ReLU,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        self.relu_types = relu_types

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        super().setup(hooked, hooks)
        hooked.state.guiding = False  # the rule applies only inside this prepared module's own calls
        relus = [m for m in hooked.model.modules() if isinstance(m, self.relu_types)]
        if not relus:
            raise ValueError(
                f"{type(hooked.model).__name__} has no {self.relu_types} module: guided backprop hooks ReLU "
                "modules (a functional F.relu cannot be hooked; use nn.ReLU modules)"
            )
        for m in relus:
            if getattr(m, "inplace", False):
                hooks.setattr(m, "inplace", False)
            self.hook(hooks, m, hooked.state)

    def hook(self, hooks: Hooks, relu: nn.Module, state: SimpleNamespace) -> None:
        """Install the rule on one ReLU module (active while ``state.guiding``)."""
        hooks.backward_pre(relu, lambda m, g: _positive_grad(m, g) if state.guiding else None)

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        return self.guided_gradients(hooked, flat, keys)

    def guided_gradients(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        """``input_gradients`` with the rule on (it is off otherwise, so nested or other prepared modules of
        the same model are not affected)."""
        hooked.state.guiding = True
        try:
            return self.input_gradients(hooked, flat, keys)
        finally:
            hooked.state.guiding = False


def _positive_grad(module: nn.Module, grad_output: tuple[torch.Tensor | None, ...]) -> tuple:
    return tuple(None if g is None else g.clamp(min=0) for g in grad_output)


class Deconvolution(GuidedBackprop):
    """Deconvolution: every ReLU module passes back ``relu(incoming gradient)``, whatever its input was (a
    full backward hook replaces the ReLU's gradient). Options, errors and products as ``GuidedBackprop``."""

    def hook(self, hooks: Hooks, relu: nn.Module, state: SimpleNamespace) -> None:
        hooks.backward(relu, lambda m, gi, go: _deconv_grad(m, gi, go) if state.guiding else None)


def _deconv_grad(module: nn.Module, grad_input: tuple, grad_output: tuple) -> tuple:
    return tuple(None if g is None else g.clamp(min=0) for g in grad_output)
