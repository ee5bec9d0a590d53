"""GradientSHAP and expected gradients: gradients at random points between inputs and sampled baselines."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import GradientMethod, gradients, target_forward
from rlhook.attribution.noise_tunnel import draw_noise
from rlhook.methods import Prepared, check_count
from rlhook.targets import Target, evaluate

__all__ = ["GradientSHAP", "ExpectedGradients", "shap_draws"]

Baselines = (
    Literal["batch"]
    | torch.Tensor
    | Mapping[NestedKey, torch.Tensor]
    | Callable[[TensorDictBase], torch.Tensor | Mapping[NestedKey, torch.Tensor]]
    | None
)


def shap_draws(
    n_ex: int, n_samples: int, n_baselines: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, alpha)``: for each example and sample, which baseline (shape ``(B, n)``, ints in
    ``[0, n_baselines)``) and where on the segment (``(B, n)``, uniform in [0, 1)). Drawn from a CPU generator
    seeded with ``seed + 1`` (the noise uses ``seed``), so they do not depend on chunking or device."""
    gen = torch.Generator().manual_seed(seed + 1)
    index = torch.randint(n_baselines, (n_ex, n_samples), generator=gen)
    alpha = torch.rand((n_ex, n_samples), generator=gen, dtype=dtype)
    return index, alpha


class GradientSHAP(GradientMethod):
    """GradientSHAP (Lundberg and Lee, 2017; captum's GradientShap): expected ``grad f(z) * (x' - b)`` over
    baselines ``b`` drawn from a distribution, ``x' = x + eps`` (``eps ~ N(0, stdev^2)``) and points
    ``z = b + alpha (x' - b)``, ``alpha ~ U[0, 1)``, with ``n_samples`` draws per example.

    The baseline distribution of input ``k`` is, in order of precedence:

    - ``baselines=`` given here: a tensor ``(S, *k.shape[batch:])`` shared by all examples (a reference
      set), a ``{key: tensor}`` of those, a callable ``fn(flat batch TensorDict) -> either of those``
      (captum's callable baselines), or ``"batch"`` (the examples of the batch itself: expected
      gradients over the data);
    - ``("baseline", k)`` in the TensorDict with an extra sample dim after the batch dims,
      ``batch + (S,) + k.shape[batch:]`` (per-example distributions), or without it (one baseline each);
    - zeros.

    All inputs of one example use the same baseline index. Draws come from ``seed`` (see ``shap_draws``)
    and are identical chunked and unchunked. Rows (samples x examples) are chunked by ``chunk_size``.

    Reads the attributed inputs and ``("baseline", k)``; writes ``("attr", k)`` (or ``("attr", name, k)``),
    same shape as ``k``, and with ``delta=True`` the additivity gap ``sum(attr) - (f(x) - mean_j f(b_j))``
    per example at ``"attr_delta"`` (or ``("attr_delta", name)``): small only in expectation.

    Args:
        n_samples: draws per example.
        stdev: input noise standard deviation (0: none), or ``{key: stdev}``.
        baselines: see above.
        multiply_by_inputs: multiply each gradient by ``x' - b`` (SHAP values); ``False`` gives the mean
            gradient.
        seed: seed of the draws.
        delta: also write the additivity gap (one more forward over inputs and drawn baselines).
    """

    default_baselines: Baselines = None

    def __init__(
        self,
        target: Target | None = None,
        *,
        n_samples: int = 5,
        stdev: float | Mapping[NestedKey, float] = 0.0,
        baselines: Baselines = None,
        multiply_by_inputs: bool = True,
        seed: int = 0,
        delta: bool = False,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        check_count("n_samples", n_samples)
        if isinstance(baselines, str) and baselines != "batch":  # a callable is checked when called
            raise ValueError(
                f"baselines must be a tensor, a dict of tensors, 'batch' or None; got {baselines!r}"
            )
        self.n_samples, self.stdev, self.seed = n_samples, stdev, seed
        self.baselines = baselines if baselines is not None else type(self).default_baselines
        self.multiply_by_inputs, self.delta = multiply_by_inputs, delta

    def _distribution(self, flat: TensorDictBase, keys: list[NestedKey]) -> tuple[dict, bool]:
        """``({key: (S, *feat) shared} or {key: (B, S, *feat) per example}, per_example)``."""
        b = self.baselines
        if callable(b):  # made from the batch (flattened), e.g. blurred or shuffled copies of the inputs
            b = b(flat)
            if not isinstance(b, torch.Tensor | Mapping):
                raise TypeError(
                    f"a baselines callable returns a tensor (S, ...) or a dict of them, got {type(b).__name__}"
                )
        if isinstance(b, str):
            return {k: flat.get(k).detach() for k in keys}, False
        if b is not None:
            dist = {k: (b[k] if isinstance(b, Mapping) else b) for k in keys}
            for k, d in dist.items():
                x = flat.get(k)
                if tuple(d.shape[1:]) != tuple(x.shape[1:]):
                    raise ValueError(
                        f"baselines for {k!r} have shape {tuple(d.shape)}; expected (S, *{tuple(x.shape[1:])}): "
                        f"S reference samples of the input's shape {tuple(x.shape[1:])}"
                    )
                dist[k] = d.to(device=x.device, dtype=x.dtype)
            return dist, False
        dist = {}
        for k in keys:
            x = flat.get(k)
            parts = (k,) if isinstance(k, str) else tuple(k)
            d = flat.get(("baseline", *parts), None)
            if d is None:
                d = torch.zeros_like(x)
            if d.dim() == x.dim():
                d = d.unsqueeze(1)
            if d.shape[0] != x.shape[0] or tuple(d.shape[2:]) != tuple(x.shape[1:]) or d.dim() != x.dim() + 1:
                raise ValueError(
                    f"baseline for {k!r} has shape {tuple(d.shape)} (batch flattened); expected the input's "
                    f"shape {tuple(x.shape)} or, for a distribution of S baselines per example, "
                    f"{(x.shape[0], 'S', *x.shape[1:])}"
                )
            dist[k] = d.to(x.dtype)
        sizes = {d.shape[1] for d in dist.values()}
        if len(sizes) > 1:
            raise ValueError(
                f"every input needs the same number of baselines per example, got {sorted(sizes)}"
            )
        return dist, True

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        o, n, n_ex = self.options, self.n_samples, flat.batch_size[0]
        if not keys:
            raise ValueError("GradientSHAP attributes to inputs; layers=... alone is not supported")
        dist, per_example = self._distribution(flat, keys)
        xs = {k: flat.get(k) for k in keys}
        dtype = xs[keys[0]].dtype
        n_base = next(iter(dist.values())).shape[1 if per_example else 0]
        index, alpha = shap_draws(n_ex, n, n_base, self.seed, dtype)
        noise = draw_noise(xs, n, self.stdev, self.seed)
        device = xs[keys[0]].device
        index, alpha = index.to(device), alpha.to(device)

        def base(k: NestedKey, step: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
            i = index[ex, step]
            return dist[k][ex, i] if per_example else dist[k][i]

        def points(k: NestedKey, step: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
            x, b = xs[k][ex] + noise[k][ex, step], base(k, step, ex)
            a = alpha[ex, step].reshape(-1, *([1] * (x.dim() - 1)))
            return b + a * (x - b)

        # one gradient per (example, sample) row (the multiplier x' - b differs per sample), chunked rows
        steps = torch.arange(n, device=device).repeat(n_ex)
        exs = torch.arange(n_ex, device=device).repeat_interleave(n)
        rows = flat[exs]
        pts = {k: points(k, steps, exs) for k in keys}
        sums, _ = gradients(
            hooked,
            rows,
            o.target,
            keys,
            1,
            lambda k, step, ex: pts[k][ex],
            torch.ones(1, dtype=dtype),
            chunk_size=o.chunk_size,
            batched=o.batched,
        )
        result: dict = {}
        for t, maps in sums.items():
            for k, g in maps.items():
                if self.multiply_by_inputs:
                    g = g * (xs[k][exs] + noise[k][exs, steps] - base(k, steps, exs))
                result.setdefault(t, {})[k] = g.reshape(n_ex, n, *g.shape[1:]).mean(1)
        if self.delta:
            self._additivity(hooked, flat, keys, result, base, device)
        return result

    def _additivity(self, hooked, flat, keys, result, base, device) -> None:
        n, n_ex = self.n_samples, flat.batch_size[0]
        steps = torch.arange(n, device=device).repeat_interleave(n_ex)
        exs = torch.arange(n_ex, device=device).repeat(n)
        rows = torch.cat([flat, flat[exs]])
        for k in keys:
            rows.set(k, torch.cat([flat.get(k), base(k, steps, exs)]))
        with torch.no_grad():
            scores = evaluate(self.options.target, target_forward(hooked, rows, self.options.target), 1)
        for t, v in scores.items():
            f_x, f_b = v[:n_ex], v[n_ex:].reshape(n, n_ex).mean(0)
            total = sum(result[t][k].reshape(n_ex, -1).sum(-1) for k in keys)
            hooked.state.deltas[t] = total - (f_x - f_b).to(total.dtype)


class ExpectedGradients(GradientSHAP):
    """Expected gradients (Erion et al., 2021): GradientSHAP whose baselines are the batch's own examples
    (``baselines="batch"`` by default) and no input noise."""

    default_baselines: Baselines = "batch"
