"""Target specs and their evaluation: one number per example for each named target."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from rlhook.keys import get_key

__all__ = [
    "Target",
    "SINGLE",
    "Aggregate",
    "OutputKey",
    "ClassLogit",
    "as_callable",
    "evaluate",
    "is_aggregate",
]

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


class Aggregate:
    """One value for the whole batch (captum's "aggregate" forward): ``target`` evaluates to a single number
    for the batch, e.g. ``Aggregate(lambda out: out["output"][:, 1].sum())``, a loss over the batch, or
    ``Aggregate("loss")`` on a TensorDictModule whose output TensorDict holds a 0-d ``"loss"`` (as TorchRL
    losses do). A TensorDict of 0-d entries gives one map per entry.

    Gradient methods (Saliency, InputXGradient, IntegratedGradients, GuidedBackprop, Deconvolution, GradCAM)
    write ``dF/dx`` for every example, ``(B, ...)``: each forward holds the whole batch at one point of the
    path, so ``F`` may couple examples (a mean, a softmax over the batch). IG's gap is the batch's one gap
    ``sum(attr) - (F(x) - F(baseline))``, repeated in every row. Perturbation methods (FeatureAblation,
    Occlusion, the Shapley methods, KernelShap, Lime, FeaturePermutation) perturb a feature in *every*
    example at once and record the change of ``F``; captum returns that one map with a first dim of 1, rlhook
    writes it in every row of ``("attr", k)`` (with a mask per example, each row holds the feature values at
    its own elements). Each forward holds exactly one batch, so ``chunk_size`` must not be below the batch.
    """

    def __init__(self, target: Target) -> None:
        if isinstance(target, Aggregate):
            raise TypeError("Aggregate(Aggregate(...)): wrap the target once")
        self.target = target
        self.neuron_paths = tuple(getattr(target, "neuron_paths", ()))

    def __call__(self, out: TensorDictBase) -> torch.Tensor | TensorDictBase:
        return as_callable(self.target)(out)

    def __repr__(self) -> str:
        return f"Aggregate({self.target!r})"


def is_aggregate(target: Target | None) -> bool:
    """Whether ``target`` gives one value for the whole batch (``Aggregate``)."""
    return isinstance(target, Aggregate)


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
    (string-joined) leaf names. Raises a clear error when a target does not depend on the graph. An
    ``Aggregate`` target gives one 0-d tensor per name (one value for the whole batch).
    ``floating=False`` (perturbation methods, which need no gradient) accepts integer and boolean targets,
    returned as float64.
    """
    value = as_callable(target)(out)
    nb = out.batch_dims if batch_dims is None else batch_dims
    aggregate = is_aggregate(target)
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
        if aggregate:
            if v.numel() != 1:
                raise ValueError(
                    f"{target!r} gives shape {tuple(v.shape)}; an Aggregate target gives one value for the whole "
                    "batch (a 0-d tensor, e.g. out['output'].sum() or a loss over the batch)"
                )
            result[name] = v.reshape(())
            continue
        if v.dim() < nb or v.shape[:nb] != out.batch_size[:nb]:
            hint = (
                "; to explain one value for the whole batch (captum's aggregate mode, e.g. a loss over the batch) "
                "wrap the target: Aggregate(target), from rlhook.targets"
                if v.numel() == 1
                else ""
            )
            raise ValueError(
                f"target {name or target!r} has shape {tuple(v.shape)}, but one value per example needs a "
                f"leading batch shape {tuple(out.batch_size[:nb])}: a target must not reduce over the batch{hint}"
            )
        result[name] = v.reshape(*v.shape[:nb], -1).sum(-1) if v.dim() > nb else v
    return result
