"""The ``Method`` base: every technique is configured once, then ``prepare(model)`` yields a hooked module.

>>> with IntegratedGradients(target="state_value").prepare(critic) as hooked:
...     td = hooked(td)                   # performs the method, writes its products into td

On exit the model is exactly as before: no hook of ours remains, ``training`` flags and ``requires_grad``
flags are restored, and methods that edit weights restore them bitwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.hooked import HookedModule
from rlhook.hooks import Hooks

__all__ = ["Method", "Prepared", "ModelState"]


class ModelState:
    """A snapshot of what a method may touch: training flags, ``requires_grad``, optionally the weights."""

    def __init__(self, model: nn.Module, weights: bool = False) -> None:
        self.training = [(m, m.training) for m in model.modules()]
        self.requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()} if weights else None
        self.model = model

    def restore(self) -> None:
        for m, flag in self.training:
            m.training = flag
        for p, flag in self.requires_grad:
            p.requires_grad_(flag)
        if self.weights is not None:
            with torch.no_grad():
                self.model.load_state_dict(self.weights)


class Prepared(HookedModule):
    """The hooked module a ``Method.prepare`` yields; calling it performs the method."""

    def __init__(self, method: Method, hooked: HookedModule, hooks: Hooks) -> None:
        super().__init__(hooked)
        self.method, self.hooks = method, hooks

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        return self.method._apply(self, td)


class Method:
    """Base class. Subclasses implement ``_apply(hooked, td) -> td`` and, for hooks that live as long as the
    prepared module (LRP rules, steering, recorders), ``_setup(hooked, hooks)``. ``edits_weights = True``
    makes ``prepare`` snapshot the weights and restore them bitwise."""

    edits_weights: bool = False

    @contextmanager
    def prepare(
        self,
        model: nn.Module,
        in_keys: Sequence[NestedKey] | Mapping[NestedKey, str] | None = None,
        out_keys: Sequence[NestedKey] | Mapping[str | int, NestedKey] | None = None,
    ) -> Iterator[Prepared]:
        """Yield a ``HookedModule`` of ``model`` whose call performs this method; restore the model on exit."""
        hooked = HookedModule(model, in_keys, out_keys)
        state = ModelState(hooked.model, weights=self.edits_weights)
        try:
            with Hooks() as hooks:
                prepared = Prepared(self, hooked, hooks)
                self._setup(prepared, hooks)
                yield prepared
        finally:
            state.restore()

    def _setup(self, hooked: Prepared, hooks: Hooks) -> None:
        """Install hooks that last for the whole ``prepare`` block (none by default)."""

    def _apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
