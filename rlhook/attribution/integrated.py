"""Integrated Gradients (Sundararajan et al., 2017), with per-target maps from one shared forward."""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import (
    GradientMethod,
    baselines,
    gradients,
    put_target_sites,
    save_layer,
    target_sites,
)
from rlhook.keys import join
from rlhook.methods import Prepared, check_count
from rlhook.targets import Target, evaluate, is_aggregate

__all__ = ["IntegratedGradients", "PathRule", "path_points"]

#: Gauss-Legendre nodes come from an eigenproblem of size n_steps^2; beyond this, use a Riemann rule
MAX_GAUSS_LEGENDRE = 4096

PathRule = Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]


@functools.lru_cache(maxsize=64)
def path_points(n_steps: int, rule: PathRule = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """``(alphas, weights)`` of a quadrature rule on [0, 1], float64, each of shape ``(n_steps,)``."""
    check_count("n_steps", n_steps, maximum=MAX_GAUSS_LEGENDRE if rule == "gausslegendre" else None)
    n = n_steps
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError("the trapezoid rule needs n_steps >= 2")
        w = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n - 1)
        return torch.linspace(0, 1, n, dtype=torch.float64), w
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if rule not in offsets:
        raise ValueError(f"unknown rule {rule!r}; choose one of {list(PathRule.__args__)}")
    alphas = (torch.arange(n, dtype=torch.float64) + offsets[rule]) / n
    return alphas, torch.full((n,), 1.0 / n, dtype=torch.float64)


class IntegratedGradients(GradientMethod):
    """Integrated Gradients along the straight path from ``("baseline", k)`` (zeros if absent) to ``k``.

    Reads ``k`` and ``("baseline", k)`` for each attributed input ``k``. Writes ``("attr", k)`` (or
    ``("attr", name, k)`` per entry of a TensorDict target), same shape as ``k``, and, with ``delta=True``,
    the completeness gap ``sum(attr) - (f(x) - f(baseline))`` per example at ``("attr_delta",)`` (or
    ``("attr_delta", name)``). All targets share one forward over the ``n_steps`` points.

    With ``layers=[...]`` each layer's output is taken as the input instead (layer integrated gradients): the
    path runs from the layer's output at the baselines to its output at the inputs, and ``("attr", layer)``
    is written for each layer (each layer on its own path).

    Args:
        n_steps: quadrature points per example.
        rule: ``"gausslegendre"`` or a Riemann rule (left, right, middle, trapezoid).
        multiply_by_inputs: multiply by ``x - baseline`` (the usual IG); ``False`` gives the path-averaged
            gradient.
        delta: also write the convergence delta (one extra forward on inputs and baselines).

    An ``Aggregate`` target (one value ``F`` for the whole batch) integrates ``dF/dx`` along the path of the
    whole batch, one forward per point; the gap is the batch's one gap, repeated in every row.
    """

    aggregate = True

    def __init__(
        self,
        target: Target | None = None,
        *,
        n_steps: int = 50,
        rule: PathRule = "gausslegendre",
        multiply_by_inputs: bool = True,
        delta: bool = True,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        path_points(n_steps, rule)  # validate early
        self.n_steps, self.rule, self.multiply_by_inputs, self.delta = (
            n_steps,
            rule,
            multiply_by_inputs,
            delta,
        )

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        o = self.options
        base = baselines(flat, keys)
        layers = hooked.state.layers
        if layers:  # layer IG: the path starts at the layers' outputs on *every* input's baseline
            base = self._layer_baselines(hooked, flat, keys, base)
        ends = self._endpoints(hooked, flat, list(base), base)
        xs = {k: flat.get(k) for k in keys} | ends["layers_x"]
        bs = base | ends["layers_b"]
        alphas, weights = path_points(self.n_steps, self.rule)
        alphas = {k: alphas.to(x.dtype).to(x.device) for k, x in xs.items()}

        diffs = {k: xs[k] - bs[k] for k in xs}
        n_ex = flat.batch_size[0]

        def points(k: NestedKey, step: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
            x, b, d = xs[k], bs[k], diffs[k]
            ones = [1] * (x.dim() - 1)
            if int(ex[0]) == 0 and ex.numel() % n_ex == 0:  # whole steps: broadcast instead of gathering
                s0 = int(step[0])
                a = alphas[k][s0 : s0 + ex.numel() // n_ex].reshape(-1, 1, *ones)
                return torch.addcmul(b[None], a, d[None]).reshape(ex.numel(), *x.shape[1:])
            return torch.addcmul(b[ex], alphas[k][step].reshape(-1, *ones), d[ex])

        runs = [(keys, [])] if not layers else [([], [layer]) for layer in layers]
        sums: dict = {}
        for run_keys, run_layers in runs:
            part, _ = gradients(
                hooked,
                flat,
                o.target,
                run_keys,
                self.n_steps,
                points,
                weights.to(_float_dtype(xs)),
                layers=run_layers,
                chunk_size=o.chunk_size,
                batched=o.batched,
                patch_layers=True,
            )
            for t, m in part.items():
                sums.setdefault(t, {}).update(m)
        if self.multiply_by_inputs:
            sums = {t: {k: g * diffs[k] for k, g in m.items()} for t, m in sums.items()}
        if self.delta:
            for t, m in sums.items():
                parts = list(keys) if not layers else [layers[0][0]]
                total = sum(m[k].reshape(m[k].shape[0], -1).sum(-1) for k in parts)
                if is_aggregate(o.target):  # one gap for the batch, repeated in every row
                    total = total.sum().expand(n_ex)
                hooked.state.deltas[t] = total - (ends["f_x"][t] - ends["f_b"][t]).to(total.dtype)
        return sums

    @staticmethod
    def _layer_baselines(hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey], base: dict) -> dict:
        """Baselines of all the model's inputs: ``("baseline", k)``, zeros for floating inputs without one; an
        integer input (token ids) without one is an error, since no default baseline is meaningful for it."""
        base = dict(base)
        for k in hooked.in_keys:
            if k in base or k not in flat.keys(include_nested=True):
                continue
            x = flat.get(k)
            if not isinstance(x, torch.Tensor):
                continue
            if flat.get(join("baseline", k), None) is not None or x.is_floating_point():
                base.update(baselines(flat, [k]))
                continue
            raise ValueError(
                f"layer IG from integer input {k!r} needs a baseline: put ('baseline', {k!r}) in the TensorDict "
                "(e.g. the ids of a padding token); without one the layer's path would have zero length"
            )
        return base

    def _endpoints(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey], base: dict) -> dict:
        """Targets and layer outputs at the inputs and at the baselines (one no-grad forward of 2B rows; two
        forwards of B rows for an ``Aggregate`` target)."""
        if is_aggregate(self.options.target):
            at_b = flat.clone(False)
            for k in keys:
                at_b.set(k, base[k])
            x_end, b_end = (self._endpoints_of(hooked, part) for part in (flat, at_b))
            return {"f_x": x_end[0], "f_b": b_end[0], "layers_x": x_end[1], "layers_b": b_end[1]}
        n = flat.batch_size[0]
        both = torch.cat([flat, flat])
        for k in keys:
            both.set(k, torch.cat([flat.get(k), base[k]]))
        with torch.no_grad(), hooked.run(both.clone(False)) as run:
            saved = {name: save_layer(run, hooked, (name, module)) for name, module in hooked.state.layers}
            sites = target_sites(run, self.options.target)
        store = run.collect(saved)
        scores = evaluate(self.options.target, put_target_sites(run, run.output, sites), batch_dims=1)
        return {
            "f_x": {t: v[:n] for t, v in scores.items()},
            "f_b": {t: v[n:] for t, v in scores.items()},
            "layers_x": {k: v[:n] for k, v in store.items()},
            "layers_b": {k: v[n:] for k, v in store.items()},
        }

    def _endpoints_of(self, hooked: Prepared, flat: TensorDictBase) -> tuple[dict, dict]:
        """``(targets, layer outputs)`` on ``flat`` (no gradients)."""
        with torch.no_grad(), hooked.run(flat.clone(False)) as run:
            saved = {name: save_layer(run, hooked, (name, module)) for name, module in hooked.state.layers}
            sites = target_sites(run, self.options.target)
        store = run.collect(saved)
        return evaluate(self.options.target, put_target_sites(run, run.output, sites), batch_dims=1), store


def _float_dtype(values: dict) -> torch.dtype:
    """The dtype of the first floating tensor (quadrature weights must not be cast to an integer dtype)."""
    return next((v.dtype for v in values.values() if v.is_floating_point()), torch.get_default_dtype())
