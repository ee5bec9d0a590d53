"""The get-set API, and the one capture path every method uses.

>>> with hooked.run(td) as run:
...     h = run.save("layers.2")
...     run.set("layers.4", lambda output: torch.zeros_like(output))   # a tensor or a proxy also works
>>> run.output["output"], h.resolve()

Declarations apply in the order they are made: a ``save`` declared after a ``set`` on the same module sees
the new value. A module called several times keeps every call; ``resolve()`` returns the last one unless
``call=`` picks another. A path may name an element of a structured output (``"lstm@0"``, see
``rlhook.elements``); ``set`` writes the element back into the structure.

Where a method needs a module it has already resolved, it passes the ``(name, module)`` pair that
``HookedModule.resolve`` returns instead of a path (a *site*), so no path is resolved twice.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from tensordict import TensorDictBase
from torch import nn

from rlhook import elements
from rlhook.hooks import Hooks
from rlhook.paths import Path
from rlhook.proxy import Proxy, ProxyError
from rlhook.targets import Target, evaluate

if TYPE_CHECKING:
    from rlhook.hooked import HookedModule

__all__ = ["NeverRanWarning", "Run", "Site", "Value", "grad_inputs", "unflatten"]

#: a module already resolved by ``HookedModule.resolve``: ``(name, module)``; the name may end in an element
Site = tuple[str, nn.Module]
Value = "torch.Tensor | Callable[[Any], Any] | Proxy"


#: the hook table of each kind of declaration (``Hooks.add`` puts a hook there for one execution)
_TABLES = {"forward": "_forward_hooks", "forward_pre": "_forward_pre_hooks"}


class NeverRanWarning(UserWarning):
    """Modules that a pattern selected gave no value in a run (``Run.skipped`` lists them)."""


class _Stop(Exception):
    """Raised by a ``stop`` hook to cut the forward short."""


def _new_value(value: Value, current: Any, where: str) -> Any:
    if isinstance(value, Proxy):
        new = value.current()
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


def unflatten(value: Any, batch: torch.Size) -> Any:
    """An activation whose leading dim is the flattened ``batch`` reshaped back to ``batch + rest``."""
    if (
        isinstance(value, torch.Tensor)
        and len(batch) > 1
        and value.dim() >= 1
        and value.shape[0] == math.prod(batch)
        and value.shape[: len(batch)] != batch
    ):
        return value.reshape(*batch, *value.shape[1:])
    return value


def grad_inputs(td: TensorDictBase, keys: list) -> TensorDictBase:
    """A shallow copy of ``td`` whose floating inputs at ``keys`` are fresh leaves that require grad."""
    td = td.copy()
    for key in keys:
        value = td.get(key, None)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
            td.set(key, value.detach().requires_grad_(True))
    return td


class Run:
    """Declarations for one forward of a ``HookedModule`` (see the module docstring).

    ``hooked.run(td)`` makes one; the forward runs when its ``with`` block exits without an error (or on
    ``execute()``). ``output`` is then the output TensorDict.

    A *lasting* run, ``hooked.run(hooks=prepared.hooks)``, registers its declarations once into hooks that live
    as long as a ``prepare`` block, and ``execute(td)`` runs it on each call: the proxies hold the latest call.
    A *reusable* run, ``hooked.run(reusable=True)``, is declared once too but registers its hooks only for the
    duration of each ``execute(td)``, so nothing stays on the modules between calls (what a ``Recorder`` does
    per frame, without declaring anew each time).
    """

    def __init__(
        self,
        hooked: HookedModule,
        td: TensorDictBase | None,
        *,
        hooks: Hooks | None = None,
        reusable: bool = False,
    ) -> None:
        self.hooked, self.td = hooked, td
        self._lasting = hooks  # a lasting run: its hooks live in these, and it executes once per call
        self._reusable = reusable or hooks is not None  # executes once per call
        self._ops: list[tuple[str, nn.Module, Callable[..., Any]]] = []
        self._grad_saves: list[tuple[Proxy, Proxy]] = []  # (grad proxy, activation proxy)
        self._needs_grad = False
        self._target: Target | None = None
        self._hooks: Hooks | None = None
        self._proxies: list[Proxy] = []
        self.output: TensorDictBase | None = None
        self.done = False
        self.stopped = False
        #: names a pattern selected that gave no value in the last ``collect`` (reported, not fatal)
        self.skipped: list[str] = []

    def _declare(self, kind: str, module: nn.Module, fn: Callable[..., Any]) -> None:
        if self._lasting is not None:
            getattr(self._lasting, kind)(module, fn)
        self._ops.append((kind, module, fn))

    def _proxy(self, proxy: Proxy) -> Proxy:
        self._proxies.append(proxy)
        return proxy

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None and not (self._reusable and self.td is None):  # a reusable template waits for td
            self.execute()

    def _site(self, path: Path | Site) -> tuple[str, nn.Module, elements.Element]:
        if isinstance(path, tuple) and len(path) == 2 and isinstance(path[1], nn.Module):
            name, module = path
        else:
            name, module = self.hooked.resolve_one(path)
        return name, module, elements.split(name)[1]

    # -- declarations ----------------------------------------------------------------------------------------
    def save(self, path: Path | Site, *, call: int = -1, detach: bool = False) -> Proxy:
        """The output (or its element) of the module at ``path``; ``"proj@input.0"`` means its input 0."""
        name, module, element = self._site(path)
        proxy = self._proxy(Proxy(self, name, "output", call))
        inp = elements.of_input(element)
        if inp is not None:
            index, rest = inp
            where = f"input {index} of {name!r}"

            def pre(mod: nn.Module, args: Any) -> None:
                value = elements.select(args[index], rest, where)
                proxy.record(
                    value.detach()
                    if detach and isinstance(value, torch.Tensor) and value.requires_grad
                    else value
                )

            self._declare("forward_pre", module, pre)
            return proxy

        where, keep = f"output of {name!r}", proxy.calls.append  # (runs on every call of the module)

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            value = elements.select(output, element, where) if element else output
            # (a value that needs no gradient is kept as it is: no detach op on every frame of a collector)
            keep(
                value.detach()
                if detach and isinstance(value, torch.Tensor) and value.requires_grad
                else value
            )

        self._declare("forward", module, hook)
        return proxy

    def save_input(self, path: Path | Site, *, index: int = 0, call: int = -1) -> Proxy:
        """Positional input ``index`` (or its element) of the module at ``path``."""
        name, module, element = self._site(path)
        proxy = self._proxy(Proxy(self, name, f"input {index}", call))
        where = f"input {index} of {name!r}"
        self._declare(
            "forward_pre",
            module,
            lambda mod, args: proxy.record(elements.select(args[index], element, where)),
        )
        return proxy

    def set(self, path: Path | Site, value: Value) -> None:
        """Replace the module's output (or its element) by a tensor (broadcast), ``value(output)`` or a
        proxy's value."""
        name, module, element = self._site(path)
        where = f"output of {name!r}"
        inp = elements.of_input(element)
        if inp is not None:
            self._set_input(name, module, inp[0], inp[1], value)
            return

        def hook(mod: nn.Module, args: Any, output: Any) -> Any:
            current = elements.select(output, element, where)
            return elements.replace(output, element, _new_value(value, current, repr(name)), where)

        self._declare("forward", module, hook)

    def set_input(self, path: Path | Site, value: Value, *, index: int = 0) -> None:
        """Replace positional input ``index`` (or its element) of the module at ``path``."""
        name, module, element = self._site(path)
        self._set_input(name, module, index, element, value)

    def _set_input(
        self, name: str, module: nn.Module, index: int, element: elements.Element, value: Value
    ) -> None:
        where = f"input {index} of {name!r}"

        def hook(mod: nn.Module, args: tuple) -> tuple:
            new = list(args)
            current = elements.select(args[index], element, where)
            new[index] = elements.replace(args[index], element, _new_value(value, current, where), where)
            return tuple(new)

        self._declare("forward_pre", module, hook)

    def save_grad(self, path: Path | Site) -> Proxy:
        """Gradient of the ``backward`` target w.r.t. the output (or its element) of the module at ``path``."""
        act = self.save(path)
        grad = self._proxy(Proxy(self, act.name, "gradient", -1))
        self._grad_saves.append((grad, act))
        self._needs_grad = True
        return grad

    def set_grad(self, path: Path | Site, value: Value) -> None:
        """Replace the gradient flowing back out of the module's output (tensor, ``value(grad)`` or proxy)."""
        name, module, element = self._site(path)
        if elements.of_input(element) is not None:
            raise ValueError(f"set_grad on {name!r}: name the output of the module that makes that input")
        self._needs_grad = True
        run = self

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            out = elements.select(output, element, f"output of {name!r}")
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                raise RuntimeError(f"set_grad on {name!r}: its output does not take part in the gradient")
            run._hooks.tensor(out, lambda g: _new_value(value, g, f"gradient of {name!r}"))

        self._declare("forward", module, hook)

    def backward(self, target: Target) -> None:
        """The target whose gradient ``save_grad``/``set_grad`` see (summed over the batch)."""
        self._target = target
        self._needs_grad = True

    def stop(self, path: Path | Site) -> None:
        """Cut the forward short right after the module at ``path`` has run."""
        _, module, _ = self._site(path)

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            raise _Stop

        self._declare("forward", module, hook)

    # -- results ---------------------------------------------------------------------------------------------
    def collect(self, proxies: Mapping[str, Proxy], *, batched: bool = False) -> dict[str, Any]:
        """``{name: proxy.resolve()}``; one error names every module that never ran. With ``batched``,
        activations are reshaped to the TensorDict's batch shape (see ``unflatten``).

        Modules a pattern selected (``hooked.optional``: a regex matching a ``ModuleList`` or a dropout that
        does not run in eval) are left out instead, listed in ``skipped`` and reported by a
        ``NeverRanWarning``; it is an error still when no module at all gave a value, and always for a module
        named one by one."""
        missing = [name for name, p in proxies.items() if not p.calls]
        if missing:  # (the common case, once per frame for a Recorder, has nothing to check)
            optional = getattr(self.hooked, "optional", set())
            fatal = [name for name in missing if name not in optional]
            if fatal or len(missing) == len(proxies):
                raise ProxyError(
                    f"modules {fatal or missing} never ran during the forward (unused, called functionally, or "
                    "skipped); check the paths"
                )
            warnings.warn(
                f"{len(missing)} module(s) the path pattern selected gave no value and are left out: {missing} "
                "(containers such as ModuleList never run; dropouts may be skipped in eval)",
                NeverRanWarning,
                stacklevel=3,
            )
        self.skipped = missing
        values = {name: p.resolve() for name, p in proxies.items() if p.calls}
        return {n: unflatten(v, self.td.batch_size) for n, v in values.items()} if batched else values

    def clear(self) -> None:
        """Drop every recorded value (a lasting or reusable run would otherwise keep the latest call's until the
        next); a reusable run also lets go of that call's TensorDicts."""
        for proxy in self._proxies:
            proxy.calls.clear()
        if self._reusable and self._lasting is None:
            self.td = self.output = None

    # -- execution -------------------------------------------------------------------------------------------
    def execute(self, td: TensorDictBase | None = None) -> TensorDictBase:
        """Run the forward with every declaration in place (what leaving the ``with`` block does). A lasting
        or reusable run executes once per call, on ``td``; its proxies then hold that call."""
        if not self._reusable and self.done:
            raise ProxyError("this run has already executed; start a new one with hooked.run(td)")
        if self._grad_saves and self._target is None:
            raise ProxyError("save_grad needs a target: declare run.backward(target) in the same block")
        if self._reusable:
            self.clear()
            self.done = self.stopped = False
        if td is not None:
            self.td = td
        if self.td is None:
            raise TypeError("a lasting or reusable run executes on a TensorDict: run.execute(td)")
        td = self.td
        grad = self._needs_grad and not torch.is_grad_enabled()
        with Hooks() as hooks, torch.enable_grad() if grad else contextlib.nullcontext():
            self._hooks = hooks
            if self._lasting is None:
                for kind, module, fn in self._ops:
                    hooks.add(getattr(module, _TABLES[kind]), fn)
            if self._needs_grad:
                td = grad_inputs(td, self.hooked.in_keys)
            try:
                out = self.hooked.model_forward(td)
            except _Stop:
                self.stopped, out = True, td
            if self._target is not None:
                if self.stopped:
                    raise ProxyError("a run cannot both stop the forward early and take a backward pass")
                self._backward(out)
        self._hooks = None
        self.output = out
        self.done = True
        return out

    def _backward(self, out: TensorDictBase) -> None:
        scores = evaluate(self._target, out)
        total = sum(v.sum() for v in scores.values())
        # structured outputs have no gradient of their own (name a tensor element); constants get zeros
        tensors = [
            (p, a.current()) for p, a in self._grad_saves if a.fired and isinstance(a.current(), torch.Tensor)
        ]
        if not total.requires_grad:
            raise RuntimeError("the backward target does not depend on anything that requires grad")
        wrt = [(p, a) for p, a in tensors if a.requires_grad]
        for proxy, act in tensors:
            if not act.requires_grad:
                proxy.record(torch.zeros_like(act))
        if not wrt:  # set_grad alone changes nothing observable
            return
        grads = torch.autograd.grad(total, [a for _, a in wrt], allow_unused=True)
        for (proxy, act), g in zip(wrt, grads):
            proxy.record(torch.zeros_like(act) if g is None else g)
