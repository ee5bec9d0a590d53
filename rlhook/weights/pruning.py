"""``Pruning``: zero the least important weights (or whole units) for the ``prepare`` block; restored bitwise.

Importance scores:

- ``"magnitude"``: ``|W|``;
- ``"grad_x_weight"``: ``|sum_batch W * dT/dW|`` on ``data`` for ``target`` (first-order Taylor estimate of the
  change of the target when the weight is removed);
- an attribution method (any ``GradientMethod``, e.g. ``IntegratedGradients(target)``): it is run on ``data``
  with ``layers=`` set to the pruned modules, and ``mean_batch |attr|`` of each output unit scores that unit
  (structured pruning only);
- a callable ``(name, module, weight) -> Tensor`` of the weight's shape (or of ``(out_units,)`` for structured).

Unstructured pruning zeroes single entries of ``weight``; structured pruning zeroes whole output units (rows
of ``weight`` along ``dim=0`` and their bias entry), scored by the L2 norm of the unit's importance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from tensordict import TensorDictBase
from torch import nn

from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.targets import Target, evaluate

__all__ = ["Pruning"]

Importance = (
    Literal["magnitude", "grad_x_weight"] | Method | Callable[[str, nn.Module, torch.Tensor], torch.Tensor]
)


class Pruning(Method):
    """Prune ``amount`` of the weights of the modules at ``paths`` while the ``prepare`` block lasts.

    Args:
        paths: module paths (default: every ``nn.Linear`` and ``nn.Conv*`` of the model).
        amount: fraction in ``[0, 1]`` of entries (or units, if ``structured``) set to zero.
        importance: see the module docstring.
        structured: prune whole output units instead of single weights.
        scope: ``"layer"`` prunes ``amount`` of each module; ``"global"`` ranks all modules together.
        data: the TensorDict that data-dependent importances are computed on.
        target: what gradient importances explain (needed for ``"grad_x_weight"``).

    After ``prepare``, ``method.masks[name]`` holds each module's 0/1 weight mask. Calling the prepared module
    runs the pruned model and writes its usual outputs.
    """

    edits_weights = True

    def __init__(
        self,
        paths: Path | Sequence[Path] | None = None,
        *,
        amount: float = 0.5,
        importance: Importance = "magnitude",
        structured: bool = False,
        scope: Literal["layer", "global"] = "layer",
        data: TensorDictBase | None = None,
        target: Target | None = None,
    ) -> None:
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"amount is a fraction in [0, 1], got {amount}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', not {scope!r}")
        if isinstance(importance, str) and importance not in ("magnitude", "grad_x_weight"):
            raise ValueError(
                f"unknown importance {importance!r}: use 'magnitude', 'grad_x_weight', an attribution method "
                "or a callable (name, module, weight) -> scores"
            )
        if importance == "grad_x_weight" and (data is None or target is None):
            raise ValueError("importance='grad_x_weight' needs data=TensorDict and target=...")
        if isinstance(importance, Method):
            if not structured:
                raise ValueError("an attribution importance scores output units; use structured=True with it")
            if data is None:
                raise ValueError("an attribution importance needs data=TensorDict to attribute on")
        self.paths, self.amount, self.importance = paths, amount, importance
        self.structured, self.scope, self.data, self.target = structured, scope, data, target

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        if self.paths is None:
            kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
            modules = [(n, m) for n, m in hooked.model.named_modules() if isinstance(m, kinds)]
            if not modules:
                raise ValueError("the model has no Linear or Conv module to prune; pass paths=[...]")
        else:
            modules = hooked.resolve(self.paths)
        for name, m in modules:
            if not isinstance(getattr(m, "weight", None), torch.Tensor):
                raise TypeError(f"module {name!r} ({type(m).__name__}) has no weight tensor to prune")
        scores = self._scores(hooked, modules)
        hooked.state.masks = masks = self._masks(modules, scores)
        with torch.no_grad():
            for name, m in modules:
                mask = masks[name]
                m.weight.mul_(mask.to(m.weight.dtype))
                if self.structured and getattr(m, "bias", None) is not None:
                    m.bias.mul_(mask.reshape(mask.shape[0], -1)[:, 0].to(m.bias.dtype))

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        return hooked.model_forward(td)

    # -- importance --------------------------------------------------------------------------------------------
    def _scores(self, hooked: Prepared, modules: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
        imp = self.importance
        if imp == "magnitude":
            return {n: m.weight.detach().abs() for n, m in modules}
        if imp == "grad_x_weight":
            weights = [m.weight for _, m in modules]
            flags = [w.requires_grad for w in weights]
            try:
                for w in weights:
                    w.requires_grad_(True)
                with torch.enable_grad():
                    out = hooked.model_forward(self.data.clone(False))
                    total = sum(v.sum() for v in evaluate(self.target, out).values())
                    grads = torch.autograd.grad(total, weights, allow_unused=True)
            finally:
                for w, f in zip(weights, flags):
                    w.requires_grad_(f)
            return {
                n: (m.weight.detach() * (torch.zeros_like(m.weight) if g is None else g)).abs()
                for (n, m), g in zip(modules, grads)
            }
        if isinstance(imp, Method):
            method = copy.copy(imp)
            method.options = copy.copy(imp.options)
            method.options.layers = [n for n, _ in modules]
            with method.prepare(hooked.model, hooked._in_spec, hooked._out_spec) as attr:
                out = attr(self.data.clone(False))
            key = method.options.key
            scores = {}
            for n, _ in modules:
                a = out.get((key, n)).detach().abs()
                a = a.reshape(-1, *a.shape[out.batch_dims :])  # (B, units, ...)
                scores[n] = a.transpose(0, 1).reshape(a.shape[1], -1).mean(1)
            return scores
        return {n: imp(n, m, m.weight.detach()).detach() for n, m in modules}

    def _masks(
        self, modules: list[tuple[str, nn.Module]], scores: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        unit: dict[str, torch.Tensor] = {}
        for n, m in modules:
            s, w = scores[n].float(), m.weight
            if self.structured:
                if s.shape == w.shape:
                    s = s.reshape(w.shape[0], -1).norm(dim=1)
                elif s.shape != (w.shape[0],):
                    raise ValueError(
                        f"importance of {n!r} has shape {tuple(s.shape)}; structured pruning needs the weight's "
                        f"shape {tuple(w.shape)} or one score per output unit ({w.shape[0]},)"
                    )
            elif s.shape != w.shape:
                raise ValueError(
                    f"importance of {n!r} has shape {tuple(s.shape)}, not the weight's shape {tuple(w.shape)}"
                )
            unit[n] = s
        if self.scope == "global":
            flat = torch.cat([s.flatten() for s in unit.values()])
            keep = _keep_mask(flat, self.amount)
            sizes = [s.numel() for s in unit.values()]
            kept = dict(zip(unit, keep.split(sizes)))
        else:
            kept = {n: _keep_mask(s.flatten(), self.amount) for n, s in unit.items()}
        masks = {}
        for n, m in modules:
            k = kept[n].reshape(unit[n].shape)
            if self.structured:
                k = k.reshape(-1, *([1] * (m.weight.dim() - 1))).expand_as(m.weight)
            masks[n] = k.to(torch.bool).clone()
        return masks


def _keep_mask(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """1 for entries kept, 0 for the ``round(amount * n)`` lowest scores (ties broken by position)."""
    n_prune = int(round(amount * scores.numel()))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune:
        order = torch.sort(scores, stable=True).indices
        keep[order[:n_prune]] = False
    return keep
