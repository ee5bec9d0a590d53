"""DeepLift with the rescale rule (Shrikumar et al., 2017) and DeepLiftShap (DeepLift averaged over a set of
baselines, Lundberg and Lee, 2017)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.attribution.base import GradientMethod, baselines, gradients, target_forward
from rlhook.hooks import Hooks
from rlhook.methods import Prepared
from rlhook.targets import Target, evaluate

__all__ = ["DeepLift", "DeepLiftShap", "RESCALED"]

#: elementwise nonlinearities whose gradient DeepLift replaces by the rescale multiplier
RESCALED: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.SiLU,
    nn.GELU,
)


class DeepLift(GradientMethod):
    """DeepLift, rescale rule: ``attr = (x - b) * m`` where ``m`` is the gradient of the target with every
    elementwise nonlinearity module (``nonlinear``) passing back ``grad * (f(u) - f(u_b)) / (u - u_b)``
    instead of ``grad * f'(u)`` (``u``, ``u_b``: its inputs on ``x`` and on the baseline; the plain
    gradient where ``|u - u_b| < eps``). Linear modules and functional ops keep their gradients.

    One forward over the inputs and their baselines side by side (``2 x B`` rows; ``chunk_size`` bounds the
    rows of one forward), one backward per target. On a network of linear layers and these nonlinearities the
    maps sum to ``f(x) - f(b)`` exactly; ``delta=True`` writes the gap ``sum(attr) - (f(x) - f(b))``.
    Max-pooling has no rule here (its plain gradient is used): captum's DeepLift has a max-pool rule.

    Reads the attributed inputs and ``("baseline", k)`` (zeros if absent); writes ``("attr", k)`` (or
    ``("attr", name, k)``), same shape as ``k``, and with ``delta=True`` ``"attr_delta"``.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        nonlinear: tuple[type[nn.Module], ...] = RESCALED,
        eps: float = 1e-10,
        delta: bool = False,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        if self.options.layers is not None:
            raise ValueError(f"{type(self).__name__} attributes to inputs; layers=... is not supported")
        self.nonlinear, self.eps, self.delta = nonlinear, eps, delta

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        super().setup(hooked, hooks)
        hooked.state.rescaling = False
        for m in hooked.model.modules():
            if isinstance(m, self.nonlinear):
                if getattr(m, "inplace", False):
                    hooks.setattr(m, "inplace", False)
                hooks.forward(m, self._rescale_hook(hooked))

    def _rescale_hook(self, hooked: Prepared):
        eps = self.eps

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not hooked.state.rescaling or not isinstance(output, torch.Tensor) or not output.requires_grad:
                return None
            u = args[0]
            half = u.shape[0] // 2  # rows: the inputs, then their baselines
            du = (u[:half] - u[half:]).detach()
            dy = (output[:half] - output[half:]).detach()
            small = du.abs() < eps
            mult = torch.where(small, torch.zeros_like(du), dy / torch.where(small, torch.ones_like(du), du))
            mult, small = torch.cat([mult, mult]), torch.cat([small, small])
            return torch.where(small, output, output.detach() + mult * (u - u.detach()))

        return hook

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        return self.pairs(hooked, flat, keys, baselines(flat, keys))

    def pairs(
        self,
        hooked: Prepared,
        flat: TensorDictBase,
        keys: list[NestedKey],
        base: dict[NestedKey, torch.Tensor],
    ) -> dict:
        """DeepLift maps of each example of ``flat`` against ``base[k]`` (same rows)."""
        n_ex = flat.batch_size[0]
        size = n_ex if self.options.chunk_size is None else max(1, self.options.chunk_size // 2)
        result: dict = {}
        deltas: dict = {}
        weights = torch.tensor([1.0, 0.0], dtype=torch.float64)
        for start in range(0, n_ex, size):
            idx = torch.arange(start, min(start + size, n_ex), device=flat.get(keys[0]).device)
            sub = flat[idx]
            xs, bs = {k: sub.get(k) for k in keys}, {k: base[k][idx] for k in keys}
            hooked.state.rescaling = True
            try:
                sums, _ = gradients(
                    hooked,
                    sub,
                    self.options.target,
                    keys,
                    2,
                    lambda k, step, ex, xs=xs, bs=bs: _pick(step, xs[k][ex], bs[k][ex]),
                    weights,
                    batched=self.options.batched,
                )
            finally:
                hooked.state.rescaling = False
            for t, maps in sums.items():
                for k, g in maps.items():
                    result.setdefault(t, {}).setdefault(k, []).append(g * (xs[k] - bs[k]))
            if self.delta:
                for t, gap in self._gaps(hooked, sub, keys, bs).items():
                    deltas.setdefault(t, []).append(gap)
        products = {t: {k: torch.cat(v) for k, v in maps.items()} for t, maps in result.items()}
        if self.delta:
            for t, parts in deltas.items():
                total = sum(m.reshape(n_ex, -1).sum(1) for m in products[t].values())
                hooked.state.deltas[t] = total - torch.cat(parts)
        return products

    def _gaps(self, hooked: Prepared, sub: TensorDictBase, keys: list[NestedKey], bs: dict) -> dict:
        ref = sub.clone(False)
        for k in keys:
            ref.set(k, bs[k])
        with torch.no_grad():
            f_x = evaluate(
                self.options.target, target_forward(hooked, sub.clone(False), self.options.target), 1
            )
            f_b = evaluate(self.options.target, target_forward(hooked, ref, self.options.target), 1)
        return {t: f_x[t] - f_b[t] for t in f_x}


def _pick(step: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where((step == 0).reshape(-1, *[1] * (x.dim() - 1)), x, b)


class DeepLiftShap(DeepLift):
    """DeepLift averaged over a set of baselines: the mean of the DeepLift maps of each example against each of
    ``S`` baselines (captum's DeepLiftShap). ``baselines=``: a tensor ``(S, *k.shape[batch:])`` or a
    ``{key: tensor}`` shared by all examples; without it, ``("baseline", k)`` of shape ``batch + (S,) +
    k.shape[batch:]`` per example. Rows: ``2 x B x S`` (chunked by ``chunk_size``).

    Reads and writes as ``DeepLift``; the delta compares with ``f(x) - mean_j f(b_j)``.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        baselines: torch.Tensor | Mapping[NestedKey, torch.Tensor] | None = None,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        self.baselines = baselines

    def _set(self, flat: TensorDictBase, keys: list[NestedKey]) -> dict[NestedKey, torch.Tensor]:
        """``{key: (B, S, *feat)}``."""
        n_ex, result = flat.batch_size[0], {}
        for k in keys:
            x = flat.get(k)
            if self.baselines is not None:
                d = self.baselines[k] if isinstance(self.baselines, Mapping) else self.baselines
                d = d.to(device=x.device, dtype=x.dtype).unsqueeze(0).expand(n_ex, *d.shape)
            else:
                parts = (k,) if isinstance(k, str) else tuple(k)
                d = flat.get(("baseline", *parts), None)
                if d is None:
                    raise ValueError(
                        f"{type(self).__name__} needs a set of baselines: baselines=(S, ...) tensor or "
                        f"('baseline', {k!r}) of shape (batch, S, ...)"
                    )
            if d.dim() != x.dim() + 1 or d.shape[0] != n_ex or tuple(d.shape[2:]) != tuple(x.shape[1:]):
                raise ValueError(
                    f"baselines for {k!r} have shape {tuple(d.shape)} (batch flattened); expected "
                    f"{(n_ex, 'S', *x.shape[1:])} or a shared set (S, *{tuple(x.shape[1:])})"
                )
            result[k] = d
        sizes = {d.shape[1] for d in result.values()}
        if len(sizes) != 1:
            raise ValueError(f"every input needs the same number of baselines; got {sorted(sizes)}")
        return result

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        dist = self._set(flat, keys)
        n_ex, n_b = flat.batch_size[0], next(iter(dist.values())).shape[1]
        rows = flat[torch.arange(n_ex, device=flat.get(keys[0]).device).repeat_interleave(n_b)]
        base = {k: d.reshape(n_ex * n_b, *d.shape[2:]) for k, d in dist.items()}
        maps = self.pairs(hooked, rows, keys, base)
        out = {
            t: {k: v.reshape(n_ex, n_b, *v.shape[1:]).mean(1) for k, v in m.items()} for t, m in maps.items()
        }
        deltas = hooked.state.deltas
        for t in list(deltas):
            deltas[t] = deltas[t].reshape(n_ex, n_b).mean(1)
        return out
