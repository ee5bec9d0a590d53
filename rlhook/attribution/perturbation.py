"""Perturbation saliency for agents (Greydanus et al., 2018, "Visualizing and Understanding Atari Agents").

Blur (or add noise to, or replace by the baseline) a soft patch of the observation around each point of a
grid and measure how much the policy and the value move: ``S = 1/2 ||t(x) - t(x perturbed)||^2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import baselines
from rlhook.attribution.occlusion import PerturbationMethod, perturbation_scores
from rlhook.methods import Prepared
from rlhook.targets import SINGLE, Target, as_callable

__all__ = ["PerturbationSaliency", "gaussian_blur"]

Mode = Literal["blur", "noise", "baseline"]


def gaussian_blur(x: torch.Tensor, dims: Sequence[int], sigma: float) -> torch.Tensor:
    """``x`` blurred by a Gaussian of std ``sigma`` (in elements) along ``dims`` (replicate padding)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).reshape(1, 1, -1)
    for d in dims:
        moved = x.movedim(d, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        flat = F.conv1d(F.pad(flat, (radius, radius), mode="replicate"), kernel)
        x = flat.reshape(shape).movedim(-1, d)
    return x


def _raw(target: Target, out: TensorDictBase) -> dict:
    value = as_callable(target)(out)
    if isinstance(value, TensorDictBase):
        return {
            (k if isinstance(k, str) else ".".join(k)): v
            for k, v in value.items(include_nested=True, leaves_only=True)
        }
    return {SINGLE: value}


class PerturbationSaliency(PerturbationMethod):
    """Greydanus et al. (2018) saliency: for grid points ``c`` (every ``stride`` elements of the spatial
    dims), perturb ``x' = x (1 - M_c) + A(x) M_c`` with a Gaussian mask ``M_c`` of std ``sigma`` centred on
    ``c`` (``sigma=0``: only the element ``c``) and score ``1/2 ||t(x) - t(x')||^2`` for every target entry
    (e.g. the policy logits and the value: pass a TensorDict target to get one map each).

    ``A(x)``: ``"blur"`` a Gaussian blur of std ``blur_sigma`` over the spatial dims (the paper's choice),
    ``"noise"`` ``x + N(0, noise_std^2)`` (seeded), ``"baseline"`` ``("baseline", k)`` (zeros if absent).
    The grid map is upsampled (linear/bilinear/trilinear) to the spatial size and broadcast over the other
    dims. Each input is perturbed on its own. Rows (grid points x examples) run ``chunk_size`` at a time.

    Defaults suit images (``spatial_dims``: the last two dims of one example, ``sigma=5``, ``stride=5``,
    blur, as in the paper); an example with one dim (a vector observation) defaults to ``sigma=0``,
    ``stride=1`` and ``mode="baseline"``: each feature replaced by its baseline in turn.

    Reads the attributed inputs (and ``("baseline", k)``); writes ``("attr", k)`` (or ``("attr", name, k)``),
    same shape as ``k``.
    """

    aggregate = False  # needs a value per example

    def __init__(
        self,
        target: Target | None = None,
        *,
        mode: Mode | None = None,
        sigma: float | None = None,
        stride: int | None = None,
        blur_sigma: float = 3.0,
        noise_std: float = 1.0,
        spatial_dims: Sequence[int] | None = None,
        seed: int = 0,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        if mode not in (None, "blur", "noise", "baseline"):
            raise ValueError(f"mode must be 'blur', 'noise' or 'baseline', got {mode!r}")
        if stride is not None and stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.mode, self.sigma, self.stride, self.blur_sigma = mode, sigma, stride, blur_sigma
        self.noise_std, self.spatial_dims, self.seed = noise_std, spatial_dims, seed

    def _layout(self, x: torch.Tensor) -> tuple[tuple[int, ...], float, int, str]:
        """``(spatial dims of the flat tensor, sigma, stride, mode)`` for input ``x`` of shape ``(B, *example)``."""
        n = x.dim() - 1
        if self.spatial_dims is not None:
            dims = tuple(sorted({1 + (d % n) for d in self.spatial_dims}))
        else:
            dims = (n - 1, n) if n >= 2 else (1,)
        image = len(dims) >= 2
        sigma = self.sigma if self.sigma is not None else (5.0 if image else 0.0)
        stride = self.stride if self.stride is not None else (5 if image else 1)
        return dims, sigma, stride, self.mode or ("blur" if image else "baseline")

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        xs = {k: flat.get(k) for k in keys}
        base = baselines(flat, keys)
        gen = torch.Generator().manual_seed(self.seed)
        plans, offsets, total = {}, {}, 0
        for k, x in xs.items():
            dims, sigma, stride, mode = self._layout(x)
            sizes = [x.shape[d] for d in dims]
            grid = [torch.arange(0, s, stride, device=x.device) for s in sizes]
            centres = torch.cartesian_prod(*grid).reshape(-1, len(dims)) if grid else None
            if mode == "blur":
                alt = gaussian_blur(x, dims, self.blur_sigma)
            elif mode == "noise":
                alt = x + (torch.randn(x.shape, generator=gen, dtype=x.dtype) * self.noise_std).to(x.device)
            else:
                alt = base[k]
            plans[k] = (dims, sigma, centres, [len(g) for g in grid], alt)
            offsets[k] = total
            total += centres.shape[0]

        def mask(k: NestedKey, p: torch.Tensor) -> torch.Tensor | None:
            x = xs[k]
            dims, sigma, centres, _, _ = plans[k]
            local = p - offsets[k]
            inside = (local >= 0) & (local < centres.shape[0])
            if not inside.any():
                return None
            c = centres[local.clamp(0, centres.shape[0] - 1)]  # (R, len(dims))
            dist2 = torch.zeros(p.shape[0], *[1] * (x.dim() - 1), dtype=x.dtype, device=x.device)
            for j, d in enumerate(dims):
                view = [1] * x.dim()
                view[0], view[d] = -1, x.shape[d]
                u = torch.arange(x.shape[d], device=x.device, dtype=x.dtype).reshape(1, -1)
                dist2 = dist2 + ((u - c[:, j : j + 1].to(x.dtype)) ** 2).reshape(view)
            m = torch.exp(-dist2 / (2 * sigma**2)) if sigma > 0 else (dist2 == 0).to(x.dtype)
            return m * inside.to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))

        with torch.no_grad():
            clean = {
                t: v.reshape(v.shape[0], -1)
                for t, v in _raw(self.options.target, hooked.model_forward(flat.clone(False))).items()
            }

        def perturb(rows: TensorDictBase, p: torch.Tensor, ex: torch.Tensor) -> None:
            for k in keys:
                m = mask(k, p)
                if m is not None:
                    rows.set(k, xs[k][ex] * (1 - m) + plans[k][4][ex] * m)

        def score(out: TensorDictBase, ex: torch.Tensor) -> dict:
            raw = _raw(self.options.target, out)
            return {
                t: 0.5 * ((clean[t][ex] - v.reshape(v.shape[0], -1)) ** 2).sum(-1) for t, v in raw.items()
            }

        scores = perturbation_scores(hooked, flat, total, perturb, score, self.options.chunk_size)
        result: dict = {}
        for t, s in scores.items():  # (P, B)
            for k, x in xs.items():
                dims, _, centres, counts, _ = plans[k]
                part = s[offsets[k] : offsets[k] + centres.shape[0]].t().reshape(x.shape[0], 1, *counts)
                sizes = [x.shape[d] for d in dims]
                if counts != sizes:
                    interp = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(dims), "nearest")
                    part = F.interpolate(
                        part,
                        size=sizes,
                        mode=interp,
                        **({} if interp == "nearest" else {"align_corners": False}),
                    )
                part = part.squeeze(1)  # (B, *spatial)
                view = [x.shape[0]] + [1] * (x.dim() - 1)
                for d in dims:
                    view[d] = x.shape[d]
                result.setdefault(t, {})[k] = part.reshape(view).expand(x.shape).to(x.dtype)
        return result
