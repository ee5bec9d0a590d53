"""The ``Method`` base: every technique is configured once, then ``prepare(model)`` yields a hooked module.

>>> with IntegratedGradients(target="state_value").prepare(critic) as hooked:
...     td = hooked(td)                   # performs the method, writes its products into td

A method object holds configuration only; everything tied to one model (resolved paths, long-lived hooks,
stores) lives in the ``Prepared`` module that ``prepare`` yields (``prepared.state``), so one configured
method can be prepared on two models at once, nested, reused after an error, and pickled.

On exit the model is exactly as before: no hook of ours remains, ``training`` flags and ``requires_grad``
flags are restored, and methods that edit weights restore them bitwise.

Writing a method: subclass ``Method``, declare the product keys in ``keys`` (``{role: default key}``),
resolve paths in ``setup(hooked, hooks)`` into ``hooked.state``, and in ``apply(hooked, td)`` capture or
replace module values through ``hooked.run(td)`` and write products at ``self.key(role, ...)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.hooked import HookedModule
from rlhook.hooks import Hooks
from rlhook.keys import join

__all__ = ["Method", "Prepared", "ModelState", "check_count"]


def check_count(name: str, value: Any, *, optional: bool = False, maximum: int | None = None) -> None:
    """Raise a clear ``ValueError``/``TypeError`` unless ``value`` is a positive int (at most ``maximum``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} is more than the supported {maximum}")


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
    """The hooked module a ``Method.prepare`` yields; calling it performs the method.

    ``state`` holds what the method resolved for this model in ``setup``; ``hooks`` the hooks that last for
    the ``prepare`` block. The input contract is enforced here, once for every method: a TensorDict (not a
    tensor), and an unbatched (0-d) TensorDict is treated as a batch of one, its products written back
    unbatched.
    """

    def __init__(self, method: Method, hooked: HookedModule, hooks: Hooks) -> None:
        super().__init__(hooked)
        self.method, self.hooks = method, hooks
        self.state = SimpleNamespace()

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        if not isinstance(td, TensorDictBase):
            raise TypeError(
                f"a prepared {type(self.method).__name__} is called with a TensorDict, got {type(td).__name__}: "
                "wrap tensors as TensorDict({'input': x}, batch_size=[len(x)])"
            )
        if td.batch_dims > 0 and td.batch_size.numel() > 0:
            return self.method.apply(self, td)
        if td.batch_dims == 0:  # unbatched: a batch of one, products written back unbatched
            return _write_back(td, self.method.apply(self, td.unsqueeze(0)), lambda v: v[0])
        # an empty batch: the method runs on one row of zeros, so every product gets its shape; none is kept
        nb, batch = td.batch_dims, td.batch_size
        row = td.apply(lambda v: v.new_zeros((1,) * nb + v.shape[nb:]), batch_size=[1] * nb)
        given = set(td.keys(include_nested=True, leaves_only=True))
        out = self.method.apply(self, row)
        return _write_back(td, out, lambda v: v[(slice(0, 0),) * nb].reshape(*batch, *v.shape[nb:]), given)


def _write_back(td: TensorDictBase, out: TensorDictBase, fit, skip: set | None = None) -> TensorDictBase:
    for key in out.keys(include_nested=True, leaves_only=True):
        if skip is not None and key in skip:
            continue
        value = out.get(key)
        td.set(key, fit(value) if isinstance(value, torch.Tensor) and value.dim() else value)
    return td


class Method:
    """Base class of every method (see the module docstring for how to write one).

    ``keys`` maps each product *role* to its default TensorDict key; ``set_keys(role=key)`` renames them
    (as TorchRL's losses do) and ``key(role, *suffix)`` builds the nested key a product is written at.
    ``edits_weights = True`` makes ``prepare`` snapshot the weights and restore them bitwise.
    """

    keys: ClassVar[Mapping[str, NestedKey]] = {}
    edits_weights: ClassVar[bool] = False

    def set_keys(self, **roles: NestedKey) -> Method:
        """Rename product keys by role (e.g. ``set_keys(attr="ig", delta="ig_delta")``); returns ``self``."""
        unknown = sorted(set(roles) - set(type(self).keys))
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no key role(s) {unknown}; its roles are {sorted(type(self).keys)}"
            )
        self._keys = {**self.key_map(), **roles}
        return self

    def key_map(self) -> dict[str, NestedKey]:
        """``{role: key}`` as configured."""
        return dict(self.__dict__.get("_keys") or type(self).keys)

    def key(self, role: str, *suffix: NestedKey | None) -> NestedKey:
        """The key of the product ``role`` with ``suffix`` appended (``None`` parts are skipped)."""
        keys = self.__dict__.get("_keys") or type(self).keys
        if role not in keys:
            raise KeyError(f"{type(self).__name__} declares no key role {role!r}; it has {sorted(keys)}")
        return join(keys[role], *(s for s in suffix if s is not None))

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
                self.setup(prepared, hooks)
                yield prepared
        finally:
            state.restore()

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        """Resolve paths into ``hooked.state`` and install hooks that last for the ``prepare`` block."""

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        """Perform the method on ``td`` (batch dims >= 1) and write its products into it."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
