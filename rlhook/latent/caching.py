"""``ActivationCaching``: store activations (and their gradients) of chosen modules in the TensorDict."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from tensordict import TensorDictBase

from rlhook import elements
from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.run import unflatten
from rlhook.targets import Target

__all__ = ["ActivationCaching", "store", "tensor_leaves"]


def tensor_leaves(name: str, value: Any, element: elements.Element = ()) -> dict[str, torch.Tensor]:
    """``{name@element: tensor}`` for every tensor in a (nested) tuple, list or dict output (``{name: value}``
    for a tensor); non-tensor parts (``None``, caches) are left out."""
    if isinstance(value, torch.Tensor):
        return {name + _suffix(name, element): value}
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, tuple | list):
        items = list(enumerate(value))
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for part, item in items:
        found.update(tensor_leaves(name, item, (*element, part)))
    return found


def _suffix(name: str, element: elements.Element) -> str:
    if not element:
        return ""
    if elements.SEP in name:  # "lstm@1" + (0,) -> "lstm@1.0"
        return "." + elements.describe(element)[1:]
    return elements.describe(element)


def store(td: TensorDictBase, key: tuple, value: torch.Tensor) -> None:
    """Put an activation at ``key``: batched (reshaped to ``td``'s batch shape) when its leading dim is the
    flattened batch, otherwise as it is, in a non-batched entry (``NonTensorData``: ``td[key]`` gives the
    tensor, shared by every example, e.g. GPT-2's position embedding ``(1, T, D)``)."""
    n = td.batch_size.numel()
    if value.dim() >= 1 and value.shape[0] == n:
        td.set(key, unflatten(value, td.batch_size))
    else:
        td.set_non_tensor(key, value)


class ActivationCaching(Method):
    """Cache the outputs of the modules at ``paths`` during the forward.

    Writes ``("cache", name)`` (forward) and ``("cache_grad", name)`` (gradient of ``target`` w.r.t. that output,
    summed over the batch) for each matched module ``name``; leading dims follow the TensorDict's batch shape.
    A path may name an element of a structured output (``"lstm@0"``, ``"attn@0"``): the key is that name.

    Whatever a module returns is stored without a hand-written callback: a structured output (tuple, list,
    dict, Hugging Face ``ModelOutput``) is stored element by element, one key per tensor in it named with
    the element syntax (``("cache", "attn@0")``, ``("cache", "attn@1")``; ``None`` and other non-tensors are
    left out) when a pattern selected the module (a module named one by one must name its element); an
    activation whose leading dim is not the batch (GPT-2's position embedding, ``(1, T, D)``; an LSTM's
    ``(layers, B, H)`` state) is kept as it is in a non-batched entry (see ``store``; ``out["cache", name]``
    is that tensor; its ``cache_grad`` is the gradient of the target summed over the batch). Modules a regex selects that never run (``ModuleList``
    containers, dropouts skipped in eval) are left out with a ``NeverRanWarning`` (``rlhook.run``).

    Args:
        paths: a path, a regex or a list of them (see ``rlhook.paths``).
        direction: ``"forward"``, ``"backward"`` or ``"both"``.
        target: what the gradients are of (needed for ``"backward"``/``"both"``).
        callback: ``callback(name, output) -> Tensor`` to transform what is stored; default stores the output
            (or the element the path names) as it is.
        detach: store detached tensors (default) so the cache holds no graph.
    """

    keys = {"cache": "cache", "cache_grad": "cache_grad"}

    def __init__(
        self,
        paths: Path | Sequence[Path],
        *,
        direction: Literal["forward", "backward", "both"] = "forward",
        target: Target | None = None,
        callback: Callable[[str, Any], torch.Tensor] | None = None,
        detach: bool = True,
    ) -> None:
        if direction not in ("forward", "backward", "both"):
            raise ValueError(f"direction must be 'forward', 'backward' or 'both', not {direction!r}")
        if direction != "forward" and target is None:
            raise ValueError(f"direction={direction!r} caches gradients, so it needs target=...")
        self.paths, self.direction, self.target, self.callback, self.detach = (
            paths,
            direction,
            target,
            callback,
            detach,
        )

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        # a lasting run: its hooks are registered once for the prepare block, and it executes on each call
        run = hooked.state.run = hooked.run(hooks=hooks)
        sites = hooked.resolve(self.paths)
        hooked.state.acts = {name: run.save((name, module)) for name, module in sites}
        if self.direction != "forward":
            run.backward(self.target)
            hooked.state.grads = {name: run.save_grad((name, module)) for name, module in sites}

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        run = hooked.state.run
        try:
            return self._products(hooked, run.execute(td), td)
        finally:
            run.clear()  # the activations live in the TensorDict, not in the run

    def _products(self, hooked: Prepared, out: TensorDictBase, td: TensorDictBase) -> TensorDictBase:
        grads, run = self.direction != "forward", hooked.state.run
        values: dict[str, torch.Tensor] = {}
        for name, value in run.collect(hooked.state.acts).items():
            value = self.callback(name, value) if self.callback is not None else value
            leaves = tensor_leaves(name, value) if name in hooked.optional else {}
            if isinstance(value, torch.Tensor):
                leaves = {name: value}
            if not leaves:
                raise TypeError(
                    f"module {name!r} returned {type(value).__name__}, which holds no tensor; name an element "
                    f"of it ('{elements.first_of(name)}') or pass callback=lambda name, out: ... to pick what to "
                    "cache"
                )
            values.update(leaves)
        if (
            out is not td
        ):  # gradients ran on a shallow copy: bring the outputs back to the caller's TensorDict
            present = set(td.keys(include_nested=True, leaves_only=True))
            for key in out.keys(include_nested=True, leaves_only=True):
                if key not in present:
                    value = out.get(key)
                    td.set(key, value.detach() if isinstance(value, torch.Tensor) else value)
        if grads:
            for name, g in run.collect(
                hooked.state.grads
            ).items():  # a shared activation's gradient is the batch's total
                store(td, self.key("cache_grad", name), g.detach())
        if self.direction != "backward":
            for name, v in values.items():
                store(td, self.key("cache", name), v.detach() if self.detach else v)
        return td
