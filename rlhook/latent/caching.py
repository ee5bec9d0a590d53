"""``ActivationCaching``: store activations (and their gradients) of chosen modules in the TensorDict."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from tensordict import TensorDictBase

from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.run import _with_grad_inputs
from rlhook.targets import Target, evaluate

__all__ = ["ActivationCaching", "fit_batch"]


def fit_batch(value: torch.Tensor, batch: torch.Size) -> torch.Tensor:
    """Reshape an activation whose leading dim is the flattened batch back to ``batch + rest``."""
    if (
        len(batch) > 1
        and value.dim() >= 1
        and value.shape[0] == math.prod(batch)
        and value.shape[: len(batch)] != batch
    ):
        return value.reshape(*batch, *value.shape[1:])
    return value


class ActivationCaching(Method):
    """Cache the outputs of the modules at ``paths`` during the forward.

    Writes ``("cache", name)`` (forward) and ``("cache_grad", name)`` (gradient of ``target`` w.r.t. that output,
    summed over the batch) for each matched module ``name``; leading dims follow the TensorDict's batch shape.

    Args:
        paths: a path, a regex or a list of them (see ``rlhook.paths``).
        direction: ``"forward"``, ``"backward"`` or ``"both"``.
        target: what the gradients are of (needed for ``"backward"``/``"both"``).
        callback: ``callback(name, output) -> Tensor`` to pick or transform what is stored (e.g. the first element
            of a tuple output); default stores tensor outputs as they are.
        detach: store detached tensors (default) so the cache holds no graph.
    """

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

    def _setup(self, hooked: Prepared, hooks: Hooks) -> None:
        self._modules = hooked.resolve(self.paths)
        self._store: dict[str, torch.Tensor] = {}

        for name, module in self._modules:
            hooks.forward(module, self._hook(name))

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            value = self.callback(name, output) if self.callback is not None else output
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"module {name!r} returned {type(value).__name__}, not a tensor; pass "
                    "callback=lambda name, out: out[0] (or similar) to pick what to cache"
                )
            self._store[name] = value

        return hook

    def _apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        self._store.clear()
        grads = self.direction != "forward"
        try:
            with torch.set_grad_enabled(grads or torch.is_grad_enabled()):
                run_td = _with_grad_inputs(td, hooked.in_keys) if grads else td
                out = hooked.model_forward(run_td)
                missing = [n for n, _ in self._modules if n not in self._store]
                if missing:
                    raise RuntimeError(
                        f"modules {missing} never ran during the forward, so nothing was cached"
                    )
                if grads:
                    scores = evaluate(self.target, out)
                    total = sum(v.sum() for v in scores.values())
                    names = list(self._store)
                    g = torch.autograd.grad(total, [self._store[n] for n in names], allow_unused=True)
                    for n, gi in zip(names, g):
                        gi = torch.zeros_like(self._store[n]) if gi is None else gi
                        out.set(("cache_grad", n), fit_batch(gi.detach(), out.batch_size))
            if self.direction != "backward":
                for n, v in self._store.items():
                    out.set(("cache", n), fit_batch(v.detach() if self.detach else v, out.batch_size))
            if (
                out is not td
            ):  # grads ran on a shallow copy: bring the products back to the caller's TensorDict
                for key in out.keys(include_nested=True, leaves_only=True):
                    if key not in td.keys(include_nested=True, leaves_only=True) or key[0] in (
                        "cache",
                        "cache_grad",
                    ):
                        td.set(key, out.get(key).detach() if grads else out.get(key))
            return td
        finally:
            self._store.clear()
