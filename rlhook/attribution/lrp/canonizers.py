"""Canonizers: temporary, function-preserving rewrites of a model that make LRP rules apply cleanly."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rlhook.hooks import Hooks
from rlhook.paths import Path, resolve_one

__all__ = ["Canonizer", "MergeBatchNorm"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Canonizer:
    """Base class: ``apply(model, hooks)`` edits the model and registers, through ``hooks``, whatever undoes
    the edit (so leaving ``prepare`` restores the model bitwise, on success and on error)."""

    def apply(self, model: nn.Module, hooks: Hooks) -> None:
        raise NotImplementedError


class MergeBatchNorm(Canonizer):
    """Fold each batch norm (eval statistics) into the Linear/Conv right before it and make the batch norm an
    identity, for the duration of ``prepare``; the original weights are copied back bitwise on exit.

    ``pairs``: ``[(affine path, batch-norm path)]``; by default every batch norm that directly follows a
    Linear/Conv inside an ``nn.Sequential``. Batch norms are put in eval mode (restored on exit).
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]] | None = None) -> None:
        self.pairs = pairs

    def _find(self, model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        if self.pairs is not None:
            return [(resolve_one(model, a)[1], resolve_one(model, b)[1]) for a, b in self.pairs]
        found = []
        for seq in model.modules():
            if isinstance(seq, nn.Sequential):
                kids = list(seq.children())
                found += [
                    (a, b) for a, b in zip(kids, kids[1:]) if isinstance(a, _AFFINE) and isinstance(b, _BN)
                ]
        return found

    def apply(self, model: nn.Module, hooks: Hooks) -> None:
        for affine, bn in self._find(model):
            if not isinstance(affine, _AFFINE) or not isinstance(bn, _BN):
                raise TypeError(
                    f"MergeBatchNorm merges a Linear/Conv followed by a BatchNorm, got {type(affine).__name__} "
                    f"and {type(bn).__name__}"
                )
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError(
                    "MergeBatchNorm needs a batch norm with running statistics (track_running_stats)"
                )
            self._merge(affine, bn, hooks)

    @staticmethod
    def _merge(affine: nn.Module, bn: nn.Module, hooks: Hooks) -> None:
        weight, bias = affine.weight, affine.bias
        saved_w, saved_b = weight.detach().clone(), None if bias is None else bias.detach().clone()
        training = bn.training
        with torch.no_grad():
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
                bn.running_var + bn.eps
            )
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            old_b = bias.detach() if bias is not None else torch.zeros_like(bn.running_mean)
            new_w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
            new_b = (old_b - bn.running_mean) * scale + shift

        def undo() -> None:
            with torch.no_grad():
                weight.copy_(saved_w)
                if saved_b is not None:
                    affine.bias.copy_(saved_b)
            if saved_b is None:
                affine.bias = None
            bn.train(training)

        hooks.undo(undo)
        bn.eval()
        with torch.no_grad():
            weight.copy_(new_w)
            if bias is not None:
                bias.copy_(new_b)
            else:
                affine.bias = nn.Parameter(new_b.to(weight.dtype), requires_grad=weight.requires_grad)
        hooks.forward(bn, lambda module, args, output: args[0])
