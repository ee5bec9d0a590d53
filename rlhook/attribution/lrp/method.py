"""The LRP method: rules installed as autograd functions at each module's output for the prepare block."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.attribution.base import GradientMethod
from rlhook.attribution.lrp.canonizers import Canonizer
from rlhook.attribution.lrp.composite import Composite
from rlhook.attribution.lrp.rules import Rule
from rlhook.hooks import Hooks
from rlhook.methods import Prepared
from rlhook.targets import Target, as_callable

__all__ = ["LRP"]


class _RuleFunction(torch.autograd.Function):
    """Identity on the module's output value; its backward returns the rule's relevance for the inputs."""

    @staticmethod
    def forward(ctx, rule: Rule, module: nn.Module, holder: list, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.rule, ctx.module, ctx.busy = rule, module, holder[1]
        ctx.save_for_backward(*inputs)
        return holder[0]

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        inputs = ctx.saved_tensors
        ctx.busy.add(id(ctx.module))  # the module's own hook stays off while its rule re-runs it
        try:
            with torch.enable_grad():
                rel = ctx.rule.relevance(ctx.module, inputs, relevance)
        finally:
            ctx.busy.discard(id(ctx.module))
        rel = tuple(r if need else None for r, need in zip(rel, ctx.needs_input_grad[3:]))
        return (None, None, None, *rel)


def _install(module: nn.Module, rule: Rule, name: str, busy: set):
    def hook(mod: nn.Module, args: tuple, output: object):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if id(mod) in busy or not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
            return None
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"LRP rule {rule!r} on {name!r}: the module returned {type(output).__name__}, not a tensor"
            )
        if len(tensors) != len(args):
            raise TypeError(f"LRP rule {rule!r} on {name!r}: only tensor positional inputs are supported")
        return _RuleFunction.apply(rule, mod, [output.detach(), busy], *tensors)

    return hook


class _Seed(torch.autograd.Function):
    """Identity on a model output; its backward multiplies the incoming gradient by the output, so relevance
    starts as ``output * d target / d output`` (the output itself on the units a target selects)."""

    @staticmethod
    def forward(ctx, output: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(output)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return grad * output


def _seed(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return _Seed.apply(value)
    return value


def _seeded(target: Target, out_keys: list) -> Callable[[TensorDictBase], object]:
    """``target`` evaluated on outputs whose backward starts relevance at ``output * d target / d output``: a
    target summing K units starts from those K outputs (their sum is the target), not from K ones."""
    fn = as_callable(target)

    def seeded(out: TensorDictBase) -> object:
        out = out.copy()
        for key in out_keys:
            value = out.get(key, None)
            out.set(key, value.apply(_seed) if isinstance(value, TensorDictBase) else _seed(value))
        return fn(out)

    return seeded


class LRP(GradientMethod):
    """Layer-wise relevance propagation (Bach et al., 2015; Montavon et al., 2019).

    The relevance of a target starts at the model's outputs and flows back through the model, each module redistributing it by its rule from ``composite`` (``Composite()``: LRP-epsilon).
    ``canonizers`` (e.g. ``MergeBatchNorm()``) rewrite the model for the prepare block and are undone
    bitwise on exit. Rules are autograd functions inserted by forward hooks (through ``Hooks``, for each call)
    at each ruled module's output; modules called functionally are seen as plain gradients.

    Reads the attributed inputs; writes ``("attr", k)`` (relevance, same shape as ``k``; or
    ``("attr", name, k)`` per target), ``("attr", layer)`` for ``layers=[...]`` (relevance at the layer's
    output) and the conservation gap ``sum_k sum(R_k) - target`` per example at ``"attr_delta"`` (or
    ``("attr_delta", name)``): zero up to the stabilisers for conserving rules when biases are zero.
    With ``conservation=tol`` a relative gap above ``tol`` on any example is an error.

    ``start``: where relevance starts. ``"output"`` (zennit's convention): ``output * d target / d output``,
    the output values of the units a target selects, so a target that sums K outputs (or takes a difference)
    starts from those values and the input relevance sums to the target. ``"gradient"``:
    ``target * d target / d output``, shift-invariant in the logits, for targets that are not linear in the
    outputs (log-probabilities, softmax probabilities, WDL scores). Both agree on a single output unit.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        composite: Composite | None = None,
        canonizers: Sequence[Canonizer] = (),
        conservation: float | None = None,
        start: Literal["output", "gradient"] = "output",
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        if start not in ("output", "gradient"):
            raise ValueError(f"start must be 'output' or 'gradient', not {start!r}")
        self.conservation, self.start = conservation, start
        self.composite = composite if composite is not None else Composite()
        self.canonizers = list(canonizers)

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        super().setup(hooked, hooks)
        for canonizer in self.canonizers:
            canonizer.apply(hooked.model, hooks)
        hooked.state.rules = list(self.composite.rules(hooked.model))
        for _, module, _ in hooked.state.rules:
            if getattr(module, "inplace", False):
                hooks.setattr(module, "inplace", False)

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        # rules live for this call only, so the same model can be explained nested or by another method
        busy: set[int] = set()
        with Hooks() as hooks:
            for name, module, rule in hooked.state.rules:
                hooks.forward(module, _install(module, rule, name, busy))
            return super().apply(hooked, td)

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        o = self.options
        start = _seeded(o.target, hooked.out_keys) if self.start == "output" else o.target
        # the target's values come from the forward the gradient takes (the seed is the identity there)
        scores: dict = {}
        sums = self.input_gradients(hooked, flat, keys, start, values=scores)
        hooked.state.scores = scores
        if self.start == "gradient":
            sums = {
                t: {k: r * scores[t].reshape(-1, *([1] * (r.dim() - 1))).to(r.dtype) for k, r in m.items()}
                for t, m in sums.items()
            }
        for t, maps in sums.items():
            if keys:
                f = scores[t]
                total = sum(maps[k].reshape(f.shape[0], -1).sum(-1) for k in keys)
                hooked.state.deltas[t] = total - f.to(total.dtype)
                self._check(t, hooked.state.deltas[t], f)
        return sums

    def _check(self, name: str | None, delta: torch.Tensor, f: torch.Tensor) -> None:
        if self.conservation is None:
            return
        bad = (delta.abs() > self.conservation * f.abs().clamp(min=1e-12)).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"relevance is not conserved for {'the target' if name is None else f'target {name!r}'} on {len(bad)} example(s) (first: #{i}, "
                f"input relevance {float(delta[i] + f[i]):.6g} vs target {float(f[i]):.6g}, allowed relative gap "
                f"{self.conservation}); biases, stabilisers, rules such as Flat/WSquare on biased layers, or an "
                "unhandled addition (map Residual to the block or use lrp.Sum) absorb or double relevance"
            )
