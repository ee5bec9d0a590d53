"""SmoothGrad, SmoothGrad-squared and VarGrad: averages over noisy copies of the inputs.

``NoiseTunnel(method)`` wraps any gradient method (Saliency, InputXGradient, IntegratedGradients, ...) and
averages its maps over ``n_samples`` noisy copies of each example. ``SmoothGrad`` / ``SmoothGradSquared`` /
``VarGrad`` are the direct forms over plain gradients, computed in one pass of the shared gradient engine.

Noise is drawn once per call from ``seed`` (a CPU generator, shape ``(B, n_samples, *input)`` per input in
key order), so chunked and unchunked runs, and repeated runs, see the same noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.aggregate import check_aggregate
from rlhook.attribution.base import GradientMethod, gradients
from rlhook.hooks import Hooks
from rlhook.methods import Prepared, check_count
from rlhook.targets import Target

__all__ = ["NoiseTunnel", "SmoothGrad", "SmoothGradSquared", "VarGrad", "draw_noise", "expand_rows"]

Kind = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]
_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def draw_noise(
    xs: Mapping[NestedKey, torch.Tensor], n_samples: int, stdev: float | Mapping[NestedKey, float], seed: int
) -> dict[NestedKey, torch.Tensor]:
    """Gaussian noise ``N(0, stdev^2)`` of shape ``(B, n_samples, *x.shape[1:])`` for each input, drawn in key
    order from a CPU generator seeded with ``seed`` (identical on every device and chunking)."""
    gen = torch.Generator().manual_seed(seed)
    noise = {}
    for k, x in xs.items():
        s = stdev[k] if isinstance(stdev, Mapping) else stdev
        z = torch.randn((x.shape[0], n_samples, *x.shape[1:]), generator=gen, dtype=x.dtype)
        noise[k] = (z * s).to(x.device)
    return noise


def expand_rows(flat: TensorDictBase, n_samples: int) -> TensorDictBase:
    """``flat`` with each example repeated ``n_samples`` times, example-major: row ``i * n_samples + j``."""
    index = torch.arange(flat.batch_size[0], device=flat.device).repeat_interleave(n_samples)
    return flat[index]


def _check(kind: str, n_samples: int) -> None:
    if kind not in _KINDS:
        raise ValueError(f"unknown noise tunnel kind {kind!r}; choose one of {list(_KINDS)}")
    check_count("n_samples", n_samples)


def _combine(mean: torch.Tensor, mean_sq: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "smoothgrad":
        return mean
    if kind == "smoothgrad_sq":
        return mean_sq
    return mean_sq - mean * mean


class NoiseTunnel(GradientMethod):
    """Any gradient method averaged over noisy inputs (Smilkov et al., 2017; Adebayo et al., 2018).

    For each example the wrapped method runs on ``x + eps_j``, ``eps_j ~ N(0, stdev^2)``, ``j < n_samples``,
    and the maps ``A_j`` are combined: ``"smoothgrad"`` mean ``A_j``, ``"smoothgrad_sq"`` mean ``A_j^2``,
    ``"vargrad"`` variance of ``A_j``. Target, inputs, layers, chunk size (rows of noisy copies x the wrapped
    method's points) and output key are the wrapped method's.

    Reads the attributed inputs (and whatever the wrapped method reads, e.g. ``("baseline", k)``); writes
    ``("attr", k)`` (or ``("attr", name, k)``), same shape as ``k``.

    Args:
        method: a configured gradient method.
        kind: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
        n_samples: noisy copies per example.
        stdev: noise standard deviation (absolute), or ``{input key: stdev}``.
        seed: seed of the noise generator.
        delta: keep the wrapped method's gap for every noisy copy (IG's completeness gap, DeepLift's ...),
            written at ``"attr_delta"`` with shape ``batch + (n_samples,)`` (captum's
            ``return_convergence_delta``); the wrapped method must be configured to compute it.
    """

    def __init__(
        self,
        method: GradientMethod,
        *,
        kind: Kind = "smoothgrad",
        n_samples: int = 8,
        stdev: float | Mapping[NestedKey, float] = 1.0,
        seed: int = 0,
        delta: bool = False,
    ) -> None:
        if not isinstance(method, GradientMethod):
            raise TypeError(
                f"NoiseTunnel wraps a gradient method (Saliency, IntegratedGradients ...), got {method!r}"
            )
        if isinstance(method, NoiseTunnel):
            raise TypeError("NoiseTunnel over a NoiseTunnel is not supported; widen stdev instead")
        _check(kind, n_samples)
        self.method, self.kind, self.n_samples, self.stdev, self.seed = method, kind, n_samples, stdev, seed
        self.delta = delta
        self.options = method.options
        check_aggregate(self)
        self.set_keys(**method.key_map())

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        check_aggregate(self)
        self.method.setup(hooked, hooks)

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        n, b = self.n_samples, flat.batch_size[0]
        noise = draw_noise({k: flat.get(k) for k in keys}, n, self.stdev, self.seed)
        rows = expand_rows(flat, n)
        for k in keys:
            rows.set(k, flat.get(k).repeat_interleave(n, 0) + noise[k].reshape(b * n, *noise[k].shape[2:]))
        products = self.method.attribute(hooked, rows, keys)
        deltas = hooked.state.deltas  # the wrapped method's gaps are per noisy copy: (B, n) or dropped
        if self.delta and not deltas:
            raise ValueError(
                f"NoiseTunnel(delta=True) needs a wrapped method that computes a gap; {self.method!r} wrote none "
                "(e.g. IntegratedGradients(delta=True), DeepLift(delta=True))"
            )
        for t in list(deltas):
            if self.delta:
                deltas[t] = deltas[t].reshape(b, n)
            else:
                del deltas[t]
        result: dict = {}
        for t, maps in products.items():
            for k, a in maps.items():
                a = a.reshape(b, n, *a.shape[1:])
                result.setdefault(t, {})[k] = _combine(a.mean(1), (a * a).mean(1), self.kind)
        return result


class SmoothGrad(GradientMethod):
    """Mean gradient over noisy copies of the inputs, in one pass of the gradient engine (Smilkov et al.).

    ``kind="smoothgrad"``: ``mean_j grad(x + eps_j)`` (signed; equal to ``NoiseTunnel(Saliency(abs=False))``);
    ``"smoothgrad_sq"``: ``mean_j grad^2``; ``"vargrad"``: ``var_j grad``. Rows (noisy copies x examples) are
    chunked by ``chunk_size``; noise as in ``draw_noise``.

    Reads the attributed inputs; writes ``("attr", k)`` (or ``("attr", name, k)``), same shape as ``k``.
    """

    kind: Kind = "smoothgrad"

    def __init__(
        self,
        target: Target | None = None,
        *,
        n_samples: int = 8,
        stdev: float | Mapping[NestedKey, float] = 1.0,
        seed: int = 0,
        kind: Kind | None = None,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        self.kind = kind or type(self).kind
        _check(self.kind, n_samples)
        self.n_samples, self.stdev, self.seed = n_samples, stdev, seed

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        o, n = self.options, self.n_samples
        xs = {k: flat.get(k) for k in keys}
        noise = draw_noise(xs, n, self.stdev, self.seed)
        dtype = next(iter(xs.values())).dtype if xs else torch.get_default_dtype()
        sums, squares = gradients(
            hooked,
            flat,
            o.target,
            keys,
            n,
            lambda k, step, ex: xs[k][ex] + noise[k][ex, step],
            torch.full((n,), 1.0 / n, dtype=dtype),
            layers=hooked.state.layers,
            chunk_size=o.chunk_size,
            batched=o.batched,
            square=self.kind != "smoothgrad",
        )
        if self.kind == "smoothgrad":
            return sums
        return {t: {k: _combine(m[k], squares[t][k], self.kind) for k in m} for t, m in sums.items()}


class SmoothGradSquared(SmoothGrad):
    """``SmoothGrad(kind="smoothgrad_sq")``: mean squared gradient over noisy inputs."""

    kind: Kind = "smoothgrad_sq"


class VarGrad(SmoothGrad):
    """``SmoothGrad(kind="vargrad")``: variance of the gradient over noisy inputs (Adebayo et al., 2018)."""

    kind: Kind = "vargrad"
