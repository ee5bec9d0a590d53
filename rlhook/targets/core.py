"""Target specs and their evaluation: one number per example for each named target."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from rlhook.keys import get_key

__all__ = ["Target", "SINGLE", "OutputKey", "ClassLogit", "as_callable", "evaluate"]

Target = NestedKey | Callable[[TensorDictBase], "torch.Tensor | TensorDictBase"]

#: the name under which a single (non-TensorDict) target is kept by ``evaluate``
SINGLE = None


class OutputKey:
    """The tensor at an output key (what a plain key target means)."""

    def __init__(self, key: NestedKey) -> None:
        self.key = key

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        return get_key(out, self.key, what="target")

    def __repr__(self) -> str:
        return f"OutputKey({self.key!r})"


class ClassLogit:
    """Logit(s) of one or several classes, or of per-example labels read from a TensorDict key.

    Args:
        classes: a class index, a list of indices (each becomes its own target ``"class_{i}"``), or ``None``
            when ``labels`` is given.
        labels: key of an integer tensor of shape ``batch`` holding each example's class.
        key: the logits key, shape ``batch + (n_classes,)``.
    """

    def __init__(
        self,
        classes: int | Sequence[int] | None = None,
        *,
        labels: NestedKey | None = None,
        key: NestedKey = "output",
    ) -> None:
        if (classes is None) == (labels is None):
            raise ValueError("ClassLogit needs exactly one of classes=... or labels=...")
        self.classes, self.labels, self.key = classes, labels, key

    def __call__(self, out: TensorDictBase) -> torch.Tensor | TensorDictBase:
        logits = get_key(out, self.key, what="logits")
        if self.labels is not None:
            labels = get_key(out, self.labels, what="labels").long()
            return logits.gather(-1, labels.reshape(*logits.shape[:-1], 1)).squeeze(-1)
        if isinstance(self.classes, int):
            return logits[..., self.classes]
        return TensorDict({f"class_{c}": logits[..., c] for c in self.classes}, batch_size=out.batch_size)

    def __repr__(self) -> str:
        what = f"labels={self.labels!r}" if self.labels is not None else f"classes={self.classes!r}"
        return f"ClassLogit({what}, key={self.key!r})"


def as_callable(target: Target) -> Callable[[TensorDictBase], Any]:
    """A target spec as a callable on the output TensorDict."""
    if target is None:
        raise ValueError("a target is needed: an output key, a callable outputs_td -> Tensor, or a preset")
    if isinstance(target, str | tuple):
        return OutputKey(target)
    if callable(target):
        return target
    raise TypeError(f"a target must be an output key, a callable or a preset, not {type(target).__name__}")


def evaluate(
    target: Target, out: TensorDictBase, batch_dims: int | None = None, *, floating: bool = True
) -> dict[str | None, torch.Tensor]:
    """Evaluate ``target`` on ``out``: ``{name: per-example tensor of shape out.batch_size}``.

    A single target is returned under the name ``None`` (``SINGLE``); a TensorDict target under its
    (string-joined) leaf names. Raises a clear error when a target does not depend on the graph.
    ``floating=False`` (perturbation methods, which need no gradient) accepts integer and boolean targets,
    returned as float64.
    """
    value = as_callable(target)(out)
    nb = out.batch_dims if batch_dims is None else batch_dims
    if isinstance(value, TensorDictBase):
        items = {
            (k if isinstance(k, str) else ".".join(k)): v
            for k, v in value.items(include_nested=True, leaves_only=True)
        }
    elif isinstance(value, torch.Tensor):
        items = {SINGLE: value}
    else:
        raise TypeError(
            f"target {target!r} returned {type(value).__name__}; expected a Tensor or a TensorDict"
        )
    result = {}
    for name, v in items.items():
        if not floating and isinstance(v, torch.Tensor) and not v.is_floating_point() and not v.is_complex():
            v = v.to(torch.float64)
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(
                f"target {name or target!r} is not a floating tensor ({getattr(v, 'dtype', type(v))}); "
                "gradients need a differentiable float output"
            )
        if v.dim() < nb or v.shape[:nb] != out.batch_size[:nb]:
            raise ValueError(
                f"target {name or target!r} has shape {tuple(v.shape)}, but one value per example needs a "
                f"leading batch shape {tuple(out.batch_size[:nb])}: a target must not reduce over the batch"
            )
        result[name] = v.reshape(*v.shape[:nb], -1).sum(-1) if v.dim() > nb else v
    return result
