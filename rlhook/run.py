"""The get-set API: declare saves and sets on a ``HookedModule``; the model runs once when the block exits.

>>> with hooked.run(td) as run:
...     h = run.save("layers.2")
...     run.set("layers.4", lambda output: torch.zeros_like(output))   # a tensor or a proxy also works
>>> run.output["output"], h.resolve()

Declarations apply in the order they are made: a ``save`` declared after a ``set`` on the same module sees
the new value. A module called several times keeps every call; ``resolve()`` returns the last one unless
``call=`` picks another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from tensordict import TensorDictBase
from torch import nn

from rlhook.hooks import Hooks
from rlhook.paths import Path
from rlhook.targets import Target, evaluate

if TYPE_CHECKING:
    from rlhook.hooked import HookedModule

__all__ = ["Run", "Proxy", "ProxyError"]

Value = "torch.Tensor | Callable[[Any], Any] | Proxy"


class ProxyError(RuntimeError):
    """A proxy resolved before its run executed, or whose module never fired."""


class _Stop(Exception):
    """Raised by a ``stop`` hook to cut the forward short."""


class Proxy:
    """A value that a run will produce: ``resolve()`` it after the ``with`` block."""

    def __init__(self, run: Run, name: str, what: str, call: int = -1) -> None:
        self._run, self.name, self.what, self.call = run, name, what, call
        self._values: list[Any] = []

    def _record(self, value: Any) -> None:
        self._values.append(value)

    def _current(self) -> Any:
        if not self._values:
            raise ProxyError(
                f"{self.what} of {self.name!r} is used before that module ran in the forward; "
                "a proxy can only feed a module that runs after its source"
            )
        return (
            self._values[self.call]
            if -len(self._values) <= self.call < len(self._values)
            else self._values[-1]
        )

    def resolve(self) -> Any:
        """The saved value. Raises ``ProxyError`` before the run or if the module never fired."""
        if not self._run.done:
            raise ProxyError(
                f"{self.what} of {self.name!r} was resolved before the run executed; call resolve() after the "
                "`with hooked.run(td) as run:` block has exited"
            )
        if not self._values:
            why = " (the forward was stopped before it)" if self._run.stopped else ""
            raise ProxyError(
                f"{self.what} of {self.name!r} never fired during the run{why}: the module was not called by the "
                "forward (unused, called functionally, or skipped)"
            )
        if not -len(self._values) <= self.call < len(self._values):
            raise ProxyError(
                f"{self.name!r} ran {len(self._values)} time(s); call={self.call} does not exist"
            )
        return self._values[self.call]

    @property
    def value(self) -> Any:
        return self.resolve()

    def __repr__(self) -> str:
        state = "resolved" if self._run.done and self._values else "pending"
        return f"Proxy({self.what} of {self.name!r}, {state})"


def _replace(value: Value, current: Any, where: str) -> Any:
    if isinstance(value, Proxy):
        new = value._current()
    elif callable(value):
        new = value(current)
    else:
        new = value
    if isinstance(current, torch.Tensor) and isinstance(new, torch.Tensor):
        try:
            torch.broadcast_shapes(new.shape, current.shape)
        except RuntimeError:
            raise ValueError(
                f"set on {where}: the new value has shape {tuple(new.shape)}, which does not broadcast to the "
                f"original shape {tuple(current.shape)}"
            ) from None
        if new.shape != current.shape:
            new = new.expand_as(current)
    return new


class Run:
    """Declarations for one forward of a ``HookedModule`` (see the module docstring)."""

    def __init__(self, hooked: HookedModule, td: TensorDictBase) -> None:
        self.hooked, self.td = hooked, td
        self._ops: list[tuple[str, nn.Module, Callable[[Hooks], None]]] = []
        self._grad_saves: list[tuple[Proxy, Proxy]] = []  # (grad proxy, activation proxy)
        self._needs_grad = False
        self._target: Target | None = None
        self.output: TensorDictBase | None = None
        self.done = False
        self.stopped = False

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self._execute()

    # -- declarations ----------------------------------------------------------------------------------------
    def save(self, path: Path, *, call: int = -1, detach: bool = False) -> Proxy:
        """The output of the module at ``path``."""
        name, module = self.hooked.resolve_one(path)
        proxy = Proxy(self, name, "output", call)

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            proxy._record(output.detach() if detach and isinstance(output, torch.Tensor) else output)

        self._ops.append(("forward", module, hook))
        return proxy

    def save_input(self, path: Path, *, index: int = 0, call: int = -1) -> Proxy:
        """Positional input ``index`` of the module at ``path``."""
        name, module = self.hooked.resolve_one(path)
        proxy = Proxy(self, name, f"input {index}", call)
        self._ops.append(("forward_pre", module, lambda mod, args: proxy._record(args[index])))
        return proxy

    def set(self, path: Path, value: Value) -> None:
        """Replace the module's output by a tensor (broadcast), ``value(output)`` or a proxy's value."""
        name, module = self.hooked.resolve_one(path)
        self._ops.append(("forward", module, lambda mod, args, output: _replace(value, output, repr(name))))

    def set_input(self, path: Path, value: Value, *, index: int = 0) -> None:
        """Replace positional input ``index`` of the module at ``path``."""
        name, module = self.hooked.resolve_one(path)

        def hook(mod: nn.Module, args: tuple) -> tuple:
            new = list(args)
            new[index] = _replace(value, args[index], f"input {index} of {name!r}")
            return tuple(new)

        self._ops.append(("forward_pre", module, hook))

    def save_grad(self, path: Path) -> Proxy:
        """Gradient of the ``backward`` target w.r.t. the output of the module at ``path``."""
        name, module = self.hooked.resolve_one(path)
        act = Proxy(self, name, "output", -1)
        grad = Proxy(self, name, "gradient", -1)
        self._ops.append(("forward", module, lambda mod, args, output: act._record(output)))
        self._grad_saves.append((grad, act))
        self._needs_grad = True
        return grad

    def set_grad(self, path: Path, value: Value) -> None:
        """Replace the gradient flowing back out of the module's output (tensor, ``value(grad)`` or proxy)."""
        name, module = self.hooked.resolve_one(path)
        self._needs_grad = True
        run = self

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                raise RuntimeError(f"set_grad on {name!r}: its output does not take part in the gradient")
            run._hooks.tensor(output, lambda g: _replace(value, g, f"gradient of {name!r}"))

        self._ops.append(("forward", module, hook))

    def backward(self, target: Target) -> None:
        """The target whose gradient ``save_grad``/``set_grad`` see (summed over the batch)."""
        self._target = target
        self._needs_grad = True

    def stop(self, path: Path) -> None:
        """Cut the forward short right after the module at ``path`` has run."""
        _, module = self.hooked.resolve_one(path)

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            raise _Stop

        self._ops.append(("forward", module, hook))

    # -- execution -------------------------------------------------------------------------------------------
    def _execute(self) -> None:
        if self._grad_saves and self._target is None:
            raise ProxyError("save_grad needs a target: declare run.backward(target) in the same block")
        td = self.td
        with Hooks() as hooks, torch.set_grad_enabled(self._needs_grad or torch.is_grad_enabled()):
            self._hooks = hooks
            for kind, module, fn in self._ops:
                getattr(hooks, kind)(module, fn)
            if self._needs_grad:
                td = _with_grad_inputs(td, self.hooked.in_keys)
            try:
                out = self.hooked.model_forward(td)
            except _Stop:
                self.stopped, out = True, td
            if self._target is not None:
                if self.stopped:
                    raise ProxyError("a run cannot both stop the forward early and take a backward pass")
                self._backward(out)
        self.output = out
        self.done = True

    def _backward(self, out: TensorDictBase) -> None:
        scores = evaluate(self._target, out)
        total = sum(v.sum() for v in scores.values())
        acts = [a._current() for _, a in self._grad_saves]
        if not total.requires_grad:
            raise RuntimeError("the backward target does not depend on anything that requires grad")
        if not acts:  # set_grad alone changes nothing observable
            return
        grads = torch.autograd.grad(total, acts, allow_unused=True)
        for (proxy, act), g in zip(self._grad_saves, grads):
            proxy._record(torch.zeros_like(act._current()) if g is None else g)


def _with_grad_inputs(td: TensorDictBase, keys: list) -> TensorDictBase:
    """A shallow copy of ``td`` whose floating inputs are fresh leaves that require grad."""
    td = td.copy()
    for key in keys:
        value = td.get(key, None)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
            td.set(key, value.detach().requires_grad_(True))
    return td
