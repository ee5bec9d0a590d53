"""``Adapter``: insert modules after, around or between points of a model through hooks, removed on exit.

No module surgery: the inserted module is called from a forward hook of the point it edits and is never
registered as a child of the user's model, so ``state_dict``, ``named_modules`` and paths stay unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from torch import nn

from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.paths import Path

__all__ = ["Adapter", "LowRank", "Mode"]

Mode = Literal["replace", "add", "before"]
_MODES = ("replace", "add", "before")


class LowRank(nn.Module):
    """A low-rank edit ``x -> x @ down @ up`` (``down``: ``(d_in, rank)``, ``up``: ``(rank, d_out)``).

    Zero-initialised ``up`` by default, so inserting it with ``mode="add"`` starts as the identity edit.
    """

    def __init__(self, d_in: int, rank: int, d_out: int | None = None, *, init_scale: float = 0.0) -> None:
        super().__init__()
        d_out = d_in if d_out is None else d_out
        self.down = nn.Parameter(torch.randn(d_in, rank) / d_in**0.5)
        self.up = nn.Parameter(torch.randn(rank, d_out) * init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.down @ self.up


class Adapter(Method):
    """Insert ``module`` at ``at`` while the ``prepare`` block lasts.

    Modes (``y`` is the output of ``at``, ``s`` the output of ``source`` when given, else ``y``):

    - ``"replace"``: ``y <- module(s)`` (e.g. an SAE reconstruction, a learned bypass from ``source``);
    - ``"add"``: ``y <- y + module(s)`` (a residual low-rank edit, a read-out of ``source`` written into ``at``);
    - ``"before"``: the first positional input ``x`` of ``at`` becomes ``module(x)`` (``source`` not allowed).

    With ``source`` the module sits *between* two points: it reads the output of ``source`` (which must run
    before ``at``) and writes into ``at``. Several insertions at once: pass ``{at: module}`` as ``at``.
    Calling the prepared module runs the edited model and writes its outputs under the usual out keys.

    Args:
        at: the module path edited, or a mapping ``{path: module}``.
        module: an ``nn.Module`` or callable ``Tensor -> Tensor`` (ignored when ``at`` is a mapping).
        mode: ``"replace"``, ``"add"`` or ``"before"``.
        source: optional module path whose output feeds ``module``.
    """

    def __init__(
        self,
        at: Path | Mapping[Path, nn.Module | Callable[[torch.Tensor], torch.Tensor]],
        module: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        mode: Mode = "replace",
        source: Path | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        if isinstance(at, Mapping):
            if module is not None:
                raise ValueError("pass either Adapter({path: module}) or Adapter(path, module), not both")
            self.modules = dict(at)
        else:
            if module is None:
                raise ValueError("Adapter(at, module): the module to insert is missing")
            self.modules = {at: module}
        for path, m in self.modules.items():
            if not callable(m):
                raise TypeError(f"the adapter for {path!r} is a {type(m).__name__}, not a module or callable")
        if mode == "before" and source is not None:
            raise ValueError("mode='before' edits the input of `at`; it cannot read another `source`")
        self.mode, self.source = mode, source

    def _setup(self, hooked: Prepared, hooks: Hooks) -> None:
        src_store: dict[str, Any] = {}
        if self.source is not None:
            src_name, src_module = hooked.resolve_one(self.source)
            hooks.forward(src_module, lambda m, a, out: src_store.__setitem__("value", out))
        for path, adapter in self.modules.items():
            name, target = hooked.resolve_one(path)
            if self.mode == "before":
                hooks.forward_pre(target, _before(adapter))
            else:
                hooks.forward(target, _after(adapter, self.mode, name, src_store if self.source else None))

    def _apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        return hooked.model_forward(td)


def _before(adapter: Callable) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (adapter(args[0]), *args[1:])

    return hook


def _after(adapter: Callable, mode: str, name: str, src: dict | None) -> Callable:
    def hook(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"module {name!r} returned {type(output).__name__}; an adapter can only edit tensor outputs"
            )
        if src is not None:
            if "value" not in src:
                raise RuntimeError(
                    f"the adapter's source did not run before {name!r}; the source must run first"
                )
            inp = src.pop("value")
        else:
            inp = output
        new = adapter(inp)
        if mode == "add":
            new = output + new
        if new.shape != output.shape:
            raise ValueError(
                f"the adapter at {name!r} returned shape {tuple(new.shape)}, but the module's output has shape "
                f"{tuple(output.shape)}"
            )
        return new

    return hook
