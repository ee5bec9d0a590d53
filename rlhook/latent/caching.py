"""``ActivationCaching``: store activations (and their gradients) of chosen modules in the TensorDict."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from tensordict import TensorDictBase

from rlhook import elements
from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.run import unflatten
from rlhook.targets import Target

__all__ = ["ActivationCaching"]


class ActivationCaching(Method):
    """Cache the outputs of the modules at ``paths`` during the forward.

    Writes ``("cache", name)`` (forward) and ``("cache_grad", name)`` (gradient of ``target`` w.r.t. that output,
    summed over the batch) for each matched module ``name``; leading dims follow the TensorDict's batch shape.
    A path may name an element of a structured output (``"lstm@0"``, ``"attn@0"``): the key is that name.

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
        values = run.collect(hooked.state.acts)
        grad = hooked.state.grads if grads else {}
        for name, value in values.items():
            value = self.callback(name, value) if self.callback is not None else value
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"module {name!r} returned {type(value).__name__}, not a tensor; name an element of it "
                    f"('{elements.first_of(name)}') or pass callback=lambda name, out: out[0] to pick what to cache"
                )
            values[name] = value
        if (
            out is not td
        ):  # gradients ran on a shallow copy: bring the outputs back to the caller's TensorDict
            present = set(td.keys(include_nested=True, leaves_only=True))
            for key in out.keys(include_nested=True, leaves_only=True):
                if key not in present:
                    value = out.get(key)
                    td.set(key, value.detach() if isinstance(value, torch.Tensor) else value)
        if grads:
            for name, g in run.collect(grad, batched=True).items():
                td.set(self.key("cache_grad", name), g.detach())
        if self.direction != "backward":
            for name, v in values.items():
                v = unflatten(v, td.batch_size)
                td.set(self.key("cache", name), v.detach() if self.detach else v)
        return td
