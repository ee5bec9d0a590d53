"""Hook bookkeeping: one place registers every hook and records its handle.

``Hooks`` is a context manager; leaving it (normally, by an exception or by ``KeyboardInterrupt``) removes every
handle it registered, even if one removal fails. ``hook_count`` counts the hooks installed on a module tree,
which is how the tests prove nothing is left behind.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from rlhook.compat import add_hook

__all__ = ["Hooks", "hook_count"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


class Hooks:
    """Registers hooks on modules and tensors and removes all of them on ``remove()`` / exit."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self._handles)

    def _keep(self, handle: Any) -> Any:
        self._handles.append(handle)
        return handle

    def undo(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on exit, in reverse order with the hook removals (for edits such as canonizers)."""
        self._keep(_Undo(fn))

    def setattr(self, obj: object, name: str, value: object) -> None:
        """Set ``obj.name = value`` now and put the old value back on exit (e.g. ``inplace`` flags)."""
        old = getattr(obj, name)
        setattr(obj, name, value)
        self.undo(lambda: setattr(obj, name, old))

    def add(self, table: MutableMapping[int, Any], fn: Callable[..., Any]) -> Any:
        """Put ``fn`` into a module's hook table (``module._forward_hooks`` or ``module._forward_pre_hooks``):
        what ``forward``/``forward_pre`` do with their default options, without a ``RemovableHandle`` (see
        ``compat.add_hook``)."""
        return self._keep(_Entry(table, add_hook(table, fn)))

    def forward(
        self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False, prepend: bool = False
    ) -> Any:
        """``fn(module, args, output)`` (or ``fn(module, args, kwargs, output)``); may return a new output."""
        if not (with_kwargs or prepend):
            return self.add(module._forward_hooks, fn)
        return self._keep(module.register_forward_hook(fn, with_kwargs=with_kwargs, prepend=prepend))

    def forward_pre(
        self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False, prepend: bool = False
    ) -> Any:
        """``fn(module, args)`` (or ``fn(module, args, kwargs)``); may return new args (and kwargs)."""
        if not (with_kwargs or prepend):
            return self.add(module._forward_pre_hooks, fn)
        return self._keep(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs, prepend=prepend))

    def backward(
        self, module: nn.Module, fn: Callable[..., Any], *, prepend: bool = False
    ) -> RemovableHandle:
        """Full backward hook ``fn(module, grad_input, grad_output)``; may return a new ``grad_input``."""
        return self._keep(module.register_full_backward_hook(fn, prepend=prepend))

    def backward_pre(
        self, module: nn.Module, fn: Callable[..., Any], *, prepend: bool = False
    ) -> RemovableHandle:
        """Full backward pre-hook ``fn(module, grad_output)``; may return a new ``grad_output``."""
        return self._keep(module.register_full_backward_pre_hook(fn, prepend=prepend))

    def tensor(
        self, tensor: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor | None]
    ) -> RemovableHandle:
        """Gradient hook on a tensor: ``fn(grad)``; may return a new gradient."""
        return self._keep(tensor.register_hook(fn))

    def remove(self) -> None:
        """Remove every handle (last registered first); re-raise the first failure after trying them all."""
        error: BaseException | None = None
        while self._handles:
            handle = self._handles.pop()
            try:
                handle.remove()
            except BaseException as exc:  # noqa: BLE001 - keep removing the others first
                error = error or exc
        if error is not None:
            raise error


class _Entry:
    """A handle-like object for a hook put straight into a module's hook table (see ``compat.add_hook``)."""

    __slots__ = ("table", "key")

    def __init__(self, table: MutableMapping[int, Any], key: int) -> None:
        self.table, self.key = table, key

    def remove(self) -> None:
        self.table.pop(self.key, None)


class _Undo:
    """A handle-like object: ``remove()`` runs ``fn`` once."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn: Callable[[], None] | None = fn

    def remove(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn()


def hook_count(module: nn.Module) -> int:
    """Number of module hooks (forward, pre, backward, state-dict) installed on ``module`` and its children."""
    return sum(len(getattr(m, d, {})) for m in module.modules() for d in _HOOK_DICTS)
