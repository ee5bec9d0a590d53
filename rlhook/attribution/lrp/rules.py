"""LRP rules: how one module redistributes the relevance of its output onto its inputs.

Relevance travels through autograd as the gradient: a module with a rule returns, as the gradient of its
inputs, the relevance ``R_in`` computed from the relevance ``R`` of its output, the module's inputs ``x``
and its parameters. With ``z_j = sum_i x_i w_ij + b_j`` and the stabiliser ``stab(z) = z + eps * sign(z)``
(``sign(0) = +1``), for Linear/Conv-like modules (anything with ``weight`` and optional ``bias``):

- ``Epsilon(eps)``:   ``R_i = x_i sum_j w_ij R_j / stab(z_j)`` (also for parameter-free modules:
  pooling, sums; ``Norm`` is its parameter-free name)
- ``Gamma(gamma)``:   units with ``z_j > 0`` share ``R_j`` in proportion to ``x_i w_ij + gamma (x_i w_ij)^+``
  (positive contributions amplified; the bias as ``b + gamma b^+``), units with ``z_j < 0`` in proportion
  to ``x_i w_ij + gamma (x_i w_ij)^-`` (bias ``b + gamma b^-``)
- ``ZPlus()``:        in proportion to the positive contributions ``(x_i w_ij)^+`` (bias ``b^+``)
- ``AlphaBeta(a, b)``: ``a`` times the share of positive contributions minus ``b`` times the share of
  negative ones (``a - b = 1``)
- ``Flat()``:         uniformly over the receptive field (``x = 1``, ``w = 1``, no bias)
- ``WSquare()``:      in proportion to ``w_ij^2`` (``x = 1``, no bias)
- ``Pass()``:         ``R`` passes unchanged (element-wise modules: activations, dropout, identity)

Rules are linear in ``R``. Multi-input modules (``Sum``, a module adding two tensors) work with
``Epsilon``/``Norm``: each input gets ``x_k * d z / d x_k * R / stab(z)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

__all__ = [
    "Rule",
    "Epsilon",
    "Norm",
    "Gamma",
    "ZPlus",
    "AlphaBeta",
    "Flat",
    "WSquare",
    "ZBox",
    "ReLUDeconvNet",
    "ReLUGuidedBackprop",
    "ReLUBetaSmooth",
    "Pass",
    "Residual",
    "stabilize",
]


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = +1``."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _leaves(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [x.detach().requires_grad_(True) for x in inputs]


def _params(module: nn.Module, rule: Rule) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(
            f"LRP rule {rule!r} modifies weights and needs a module with a `weight` (Linear, Conv ...), got "
            f"{type(module).__name__}; map it to Epsilon/Norm (parameter-free) or Pass instead"
        )
    bias = getattr(module, "bias", None)
    return weight.detach(), bias.detach() if isinstance(bias, torch.Tensor) else None


def _zero_bias(zero_params: str | Sequence[str] | None) -> bool:
    """Whether ``zero_params`` (zennit's argument: parameter names set to zero) zeroes the bias."""
    names = {zero_params} if isinstance(zero_params, str) else set(zero_params or ())
    if names - {"bias"}:
        raise ValueError(
            f"zero_params may only name 'bias' (a zero weight carries no relevance), got {zero_params!r}"
        )
    return "bias" in names


def _call(
    module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    params = {"weight": weight}
    if getattr(module, "bias", None) is not None:
        params["bias"] = bias if bias is not None else torch.zeros_like(module.bias)
    return functional_call(module, params, (x,))


class Rule:
    """Base class: ``relevance(module, inputs, R) -> one relevance tensor (or None) per input``."""

    def relevance(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], relevance: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Epsilon(Rule):
    """``R_i = x_i sum_j (dz_j / dx_i) R_j / stab(z_j)`` with the module's own parameters (LRP-epsilon; with a
    tiny ``eps`` LRP-0). Works for any module whose output is a tensor, including several inputs."""

    def __init__(self, eps: float = 1e-6, zero_params: str | Sequence[str] | None = None) -> None:
        self.eps, self.zero_params = eps, zero_params
        self._no_bias = _zero_bias(zero_params)

    def relevance(self, module, inputs, relevance):
        xs = _leaves(inputs)
        if self._no_bias:  # the bias-free variant: z from the weights alone
            z = _call(module, xs[0], _params(module, self)[0], None)
        else:
            z = module(*xs)
        grads = torch.autograd.grad(z, xs, relevance / stabilize(z, self.eps), allow_unused=True)
        return tuple(None if g is None else x * g for x, g in zip(xs, grads))


class Norm(Epsilon):
    """``Epsilon`` for parameter-free modules (average pooling, sums): proportional redistribution."""


class _Signed(Rule):
    """Shared machinery of the sign-splitting rules (Gamma, ZPlus, AlphaBeta) for Linear/Conv-like modules."""

    def _share(self, module, x, w_pos, b_pos, w_neg):
        """Leaves ``x+``, ``x-`` and ``z = f(x+; w_pos, b_pos) + f(x-; w_neg, 0)``."""
        xp = x.clamp(min=0).detach().requires_grad_(True)
        xn = x.clamp(max=0).detach().requires_grad_(True)
        z = _call(module, xp, w_pos, b_pos) + _call(module, xn, w_neg, None)
        return xp, xn, z

    def _redistribute(self, xp, xn, z, grad_out):
        gp, gn = torch.autograd.grad(z, (xp, xn), grad_out)
        return xp * gp + xn * gn


class Gamma(_Signed):
    """LRP-gamma (generalised to inputs of both signs): favour contributions that share the unit's sign."""

    def __init__(
        self, gamma: float = 0.25, eps: float = 1e-6, zero_params: str | Sequence[str] | None = None
    ) -> None:
        self.gamma, self.eps, self.zero_params = gamma, eps, zero_params
        self._no_bias = _zero_bias(zero_params)

    def relevance(self, module, inputs, relevance):
        (x,) = inputs
        w, b = _params(module, self)
        g = self.gamma
        z = _call(module, x.detach(), w, b)  # the unit's sign: from the module as it is, bias included
        b = None if self._no_bias else b
        bp = None if b is None else b + g * b.clamp(min=0)
        bn = None if b is None else b + g * b.clamp(max=0)
        pos = self._share(module, x, w + g * w.clamp(min=0), bp, w + g * w.clamp(max=0))
        neg = self._share(module, x, w + g * w.clamp(max=0), bn, w + g * w.clamp(min=0))
        r = self._redistribute(*pos, relevance * (z > 0) / stabilize(pos[2], self.eps))
        r = r + self._redistribute(*neg, relevance * (z < 0) / stabilize(neg[2], self.eps))
        return (r,)


class AlphaBeta(_Signed):
    """LRP-alpha-beta: ``alpha * R(positive contributions) - beta * R(negative contributions)``,
    ``alpha - beta = 1``."""

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 1.0,
        eps: float = 1e-6,
        zero_params: str | Sequence[str] | None = None,
    ) -> None:
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-12:
            raise ValueError(f"AlphaBeta needs alpha, beta >= 0 with alpha - beta = 1, got {alpha}, {beta}")
        self.alpha, self.beta, self.eps, self.zero_params = alpha, beta, eps, zero_params
        self._no_bias = _zero_bias(zero_params)

    def relevance(self, module, inputs, relevance):
        (x,) = inputs
        w, b = _params(module, self)
        b = None if self._no_bias else b
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        pos = self._share(module, x, wp, None if b is None else b.clamp(min=0), wn)
        r = self.alpha * self._redistribute(*pos, relevance / stabilize(pos[2], self.eps))
        if self.beta:
            neg = self._share(module, x, wn, None if b is None else b.clamp(max=0), wp)
            r = r - self.beta * self._redistribute(*neg, relevance / stabilize(neg[2], self.eps))
        return (r,)


class ZPlus(AlphaBeta):
    """LRP-z+: relevance in proportion to the positive contributions (``AlphaBeta(1, 0)``)."""

    def __init__(self, eps: float = 1e-6, zero_params: str | Sequence[str] | None = None) -> None:
        super().__init__(1.0, 0.0, eps, zero_params)


class _Uniform(Rule):
    """Rules that ignore the input: ``x = 1``, parameters mapped by ``_weight`` (the bias too unless zeroed)."""

    def __init__(self, eps: float = 1e-6, zero_params: str | Sequence[str] | None = "bias") -> None:
        self.eps, self.zero_params = eps, zero_params
        self._no_bias = _zero_bias(zero_params)

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def relevance(self, module, inputs, relevance):
        (x,) = inputs
        w, b = _params(module, self)
        ones = torch.ones_like(x).requires_grad_(True)
        z = _call(module, ones, self._weight(w), None if self._no_bias or b is None else self._weight(b))
        (g,) = torch.autograd.grad(z, ones, relevance / stabilize(z, self.eps))
        return (g,)


class Flat(_Uniform):
    """LRP-flat: relevance spread uniformly over each output's receptive field (no bias)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__(eps, "bias")

    def _weight(self, w):
        return torch.ones_like(w)


class WSquare(_Uniform):
    """LRP-w^2: relevance in proportion to the squared weights; ``zero_params=None`` keeps the squared bias in
    the denominator (zennit's default), the default ``"bias"`` drops it."""

    def _weight(self, w):
        return w * w


class ZBox(Rule):
    """LRP-z^B for inputs bounded by ``low <= x <= high`` (e.g. pixels; tensors broadcast to one example or to
    the batch): ``z = f(x; w, b) - f(low; w+, b+) - f(high; w-, b-)`` and
    ``R = x g(x) - low g(low) - high g(high)`` with the gradients of each term at ``R_out / stab(z)``."""

    def __init__(
        self,
        low: float | torch.Tensor,
        high: float | torch.Tensor,
        eps: float = 1e-6,
        zero_params: str | Sequence[str] | None = None,
    ) -> None:
        self.low, self.high, self.eps, self.zero_params = low, high, eps, zero_params
        self._no_bias = _zero_bias(zero_params)

    def relevance(self, module, inputs, relevance):
        (x,) = inputs
        w, b = _params(module, self)
        b = None if self._no_bias else b
        bounds = [
            torch.as_tensor(v, dtype=x.dtype, device=x.device).expand_as(x) for v in (self.low, self.high)
        ]
        leaves = [x.detach().requires_grad_(True)] + [v.detach().clone().requires_grad_(True) for v in bounds]
        params = [(w, b), (w.clamp(min=0), None if b is None else b.clamp(min=0))]
        params.append((w.clamp(max=0), None if b is None else b.clamp(max=0)))
        zs = [_call(module, leaf, pw, pb) for leaf, (pw, pb) in zip(leaves, params)]
        s = relevance / stabilize(zs[0] - zs[1] - zs[2], self.eps)
        grads = [torch.autograd.grad(z, leaf, s)[0] for z, leaf in zip(zs, leaves)]
        return (leaves[0] * grads[0] - leaves[1] * grads[1] - leaves[2] * grads[2],)


class ReLUDeconvNet(Rule):
    """For ReLU modules: pass back the positive part of the relevance, whatever the input (DeconvNet)."""

    def relevance(self, module, inputs, relevance):
        return (relevance.clamp(min=0),)


class ReLUGuidedBackprop(Rule):
    """For ReLU modules: pass back the relevance where both it and the ReLU's input are positive."""

    def relevance(self, module, inputs, relevance):
        return (relevance * ((inputs[0] > 0) & (relevance > 0)).to(relevance.dtype),)


class ReLUBetaSmooth(Rule):
    """For ReLU modules: the relevance times ``sigmoid(beta * x)``, the gradient of a softplus of sharpness
    ``beta`` (Dombrowski et al., 2019), in place of the ReLU's step."""

    def __init__(self, beta: float = 10.0) -> None:
        self.beta = beta

    def relevance(self, module, inputs, relevance):
        return (relevance * torch.sigmoid(self.beta * inputs[0]),)


class Pass(Rule):
    """The relevance of the output passes unchanged to the (single, same-shaped) input."""

    def relevance(self, module, inputs, relevance):
        if len(inputs) != 1 or inputs[0].shape != relevance.shape:
            raise ValueError(
                f"Pass needs one input shaped like the output; {type(module).__name__} has inputs "
                f"{[tuple(x.shape) for x in inputs]} and output {tuple(relevance.shape)}"
            )
        return (relevance,)


class Residual(Rule):
    """For a residual block ``y = skip(x) + branch(x)`` (optionally followed by an element-wise activation,
    treated as ``Pass``): split the block's relevance between the two summands in proportion to their
    values (``R_s = s * R / stab(s + b)``), then send each share back through its own path, where the rules
    of the modules inside apply. ``branch`` and ``skip`` name submodules of the block (``skip=None``: the
    identity); a sequence of names is applied in order (``("conv1", "conv2", "se")`` for a block whose
    branch is not one module). Map it by name to the block, e.g.
    ``Composite(names={"blocks.0": Residual("body")})``.
    """

    def __init__(self, branch: str | Sequence[str], skip: str | None = None, eps: float = 1e-6) -> None:
        self.branch = (branch,) if isinstance(branch, str) else tuple(branch)
        self.skip, self.eps = skip, eps

    def relevance(self, module, inputs, relevance):
        x = inputs[0].detach().requires_grad_(True)
        zb = x
        for name in self.branch:
            zb = module.get_submodule(name)(zb)
        zs = module.get_submodule(self.skip)(x) if self.skip is not None else x
        if zb.shape != relevance.shape or zs.shape != relevance.shape:
            raise ValueError(
                f"Residual({self.branch!r}, {self.skip!r}): branch {tuple(zb.shape)} and skip {tuple(zs.shape)} "
                f"outputs must match the block output {tuple(relevance.shape)}"
            )
        s = relevance / stabilize(zs + zb, self.eps)
        if self.skip is None:
            (g,) = torch.autograd.grad(zb, x, zb * s)
            return (x * s + g,) + (None,) * (len(inputs) - 1)
        (g,) = torch.autograd.grad((zs, zb), x, (zs * s, zb * s))
        return (g,) + (None,) * (len(inputs) - 1)
