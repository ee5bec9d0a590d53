"""``Splice``: insert modules after, around or between points of a model through hooks, removed on exit.

No module surgery: the inserted module is called from a forward hook of the point it edits and is never
registered as a child of the user's model, so ``state_dict``, ``named_modules`` and paths stay unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from torch import nn

from rlhook import elements
from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.proxy import Proxy

__all__ = ["Splice", "LowRank", "Mode"]

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


class Splice(Method):
    """Insert ``module`` at ``paths`` for every call of the prepared module (through ``Run``).

    Modes (``y`` is the output of the spliced point, ``s`` the output of ``source`` when given, else ``y``):

    - ``"replace"``: ``y <- module(s)`` (e.g. an SAE reconstruction, a learned bypass from ``source``);
    - ``"add"``: ``y <- y + module(s)`` (a residual low-rank edit, a read-out of ``source`` written into it);
    - ``"before"``: the first positional input ``x`` of the point becomes ``module(x)`` (no ``source``).

    With ``source`` the module sits *between* two points: it reads the output of ``source`` (which must run
    before) and writes into the spliced point. Several insertions at once: pass ``{path: module}``. A path may
    name an element of a structured output (``"lstm@0"``). Calling the prepared module runs the edited model
    and writes its outputs under the usual out keys.

    Args:
        paths: the module path edited, or a mapping ``{path: module}``.
        module: an ``nn.Module`` or callable ``Tensor -> Tensor`` (not given when ``paths`` is a mapping).
        mode: ``"replace"``, ``"add"`` or ``"before"``.
        source: optional module path whose output feeds ``module``.
    """

    def __init__(
        self,
        paths: Path | Mapping[Path, nn.Module | Callable[[torch.Tensor], torch.Tensor]],
        module: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        mode: Mode = "replace",
        source: Path | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
        if isinstance(paths, Mapping):
            if module is not None:
                raise ValueError("pass either Splice({path: module}) or Splice(path, module), not both")
            self.modules = dict(paths)
        else:
            if module is None:
                raise ValueError("Splice(paths, module): the module to insert is missing")
            self.modules = {paths: module}
        for path, m in self.modules.items():
            if not callable(m):
                raise TypeError(
                    f"the module spliced at {path!r} is a {type(m).__name__}, not a module or callable"
                )
        if mode == "before" and source is not None:
            raise ValueError("mode='before' edits the input of the point; it cannot read another `source`")
        self.mode, self.source = mode, source

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        hooked.state.source = hooked.resolve_one(self.source) if self.source is not None else None
        hooked.state.points = [(hooked.resolve_one(p), m) for p, m in self.modules.items()]

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        with hooked.run(td) as run:
            src = run.save(hooked.state.source) if hooked.state.source is not None else None
            for site, module in hooked.state.points:
                if self.mode == "before":
                    run.set_input(site, module)
                else:
                    run.set(site, _Edit(module, self.mode, site[0], src))
        return run.output


class _Edit:
    """The new output of a spliced point: ``module(s)`` or ``y + module(s)``, shape-checked."""

    def __init__(self, module: Callable, mode: str, name: str, source: Proxy | None) -> None:
        self.module, self.mode, self.name, self.source = module, mode, name, source

    def __call__(self, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"module {self.name!r} returned {type(output).__name__}; a splice edits tensors: name an element "
                f"of the output, e.g. '{elements.first_of(self.name)}'"
            )
        if self.source is not None and not self.source.fired:
            raise RuntimeError(
                f"the splice's source did not run before {self.name!r}; the source must run first"
            )
        new = self.module(self.source.current() if self.source is not None else output)
        if self.mode == "add":
            new = output + new
        if new.shape != output.shape:
            raise ValueError(
                f"the module spliced at {self.name!r} returned shape {tuple(new.shape)}, but the point's output "
                f"has shape {tuple(output.shape)}"
            )
        return new
