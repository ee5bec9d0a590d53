"""Surrogate-model attribution: Lime (Ribeiro et al., 2016) and KernelShap (Lundberg and Lee, 2017).

Both draw binary coalitions ``z`` over the features, evaluate the target with the features of ``z`` kept and
the rest at the baseline, and fit a weighted linear model ``target ~ z`` per example; its coefficients are the
features' attributions. One draw of coalitions serves every example and every target: K per-target maps cost
the forwards of one, and the K fits share one solve.
"""

from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import baselines
from rlhook.attribution.coalitions import coalition_values
from rlhook.attribution.features import FeatureMask, feature_positions, spread
from rlhook.attribution.occlusion import PerturbationMethod
from rlhook.extras import require
from rlhook.methods import Prepared, check_count
from rlhook.targets import Target, is_aggregate

__all__ = ["KernelShap", "Lime", "weighted_linear_fit"]


def weighted_linear_fit(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coefficients ``(B, F, K)`` of the weighted least-squares fits ``y[b, :, j] ~ z @ c + intercept`` with
    sample weights ``w[b]`` (``w`` of shape ``(B, N)``, or ``(1, N)`` shared), for ``z (N, F)`` and ``y
    (B, N, K)``; the minimum-norm solution when the fit is underdetermined (the intercept is not penalised)."""
    z = z.to(y.dtype)
    w = w.to(y.dtype)
    share = w / w.sum(-1, keepdim=True)
    zc = z - (share @ z)[:, None]  # (Bw, N, F)
    yc = y - (share[:, None] @ y)  # (B, N, K)
    root = w.sqrt()[..., None]
    return torch.linalg.pinv(root * zc) @ (root * yc)


def _lasso_fit(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    linear_model = require("sklearn.linear_model", "probe")
    zn = z.to(y.dtype).cpu().numpy()
    coefs = []
    for b in range(y.shape[0]):
        wb = w[b if w.shape[0] > 1 else 0].cpu().numpy()
        fit = linear_model.Lasso(alpha=alpha).fit(zn, y[b].cpu().numpy(), sample_weight=wb)
        coefs.append(torch.as_tensor(fit.coef_, dtype=y.dtype).reshape(y.shape[-1], z.shape[1]).t())
    return torch.stack(coefs).to(y.device)


class Lime(PerturbationMethod):
    """Lime: ``n_samples`` coalitions, each feature kept with probability 1/2; sample weights
    ``exp(-d^2 / (2 kernel_width^2))`` with ``d`` the cosine (or euclidean) distance between the example's
    attributed inputs, flattened and concatenated, and their perturbed version; a Lasso fit (``alpha``, via
    scikit-learn, as in captum) or, with ``alpha=0``, a weighted least-squares fit in torch.

    Draws come from a generator seeded with ``seed`` (``torch.bernoulli`` per sample: captum's draws for one
    example after ``torch.manual_seed(seed)``); they are shared by the examples of a batch, where captum draws
    anew for each example. Cost: ``n_samples x B`` rows, whatever the number of targets. For an ``Aggregate``
    target the distance is between the whole batch and its perturbed version (one fit, as captum).

    Reads the attributed inputs, ``("baseline", k)`` and ``("feature_mask", k)`` (see ``FeatureAblation``);
    writes ``("attr", k)`` (or ``("attr", name, k)``): each element holds its feature's coefficient.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        n_samples: int = 50,
        feature_mask: FeatureMask | None = None,
        alpha: float = 0.01,
        kernel_width: float = 1.0,
        distance: Literal["cosine", "euclidean"] = "cosine",
        seed: int = 0,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        check_count("n_samples", n_samples)
        if alpha < 0 or kernel_width <= 0:
            raise ValueError(f"alpha must be >= 0 and kernel_width > 0, got {alpha} and {kernel_width}")
        if distance not in ("cosine", "euclidean"):
            raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
        self.n_samples, self.feature_mask, self.seed = n_samples, feature_mask, seed
        self.alpha, self.kernel_width, self.distance = alpha, kernel_width, distance

    def draw(self, n_features: int, gen: torch.Generator) -> torch.Tensor:
        """The coalitions, ``(n_samples, F)`` bool."""
        half = torch.full((1, n_features), 0.5)
        return torch.cat([torch.bernoulli(half, generator=gen) for _ in range(self.n_samples)]).bool()

    def weights(
        self, z: torch.Tensor, flat: TensorDictBase, keys: list[NestedKey], position: dict
    ) -> torch.Tensor:
        """Sample weights ``(B, N)`` (or ``(1, N)`` when shared by the examples)."""
        base = baselines(flat, keys)
        n_ex, n_f = flat.batch_size[0], z.shape[1]
        stats = {}  # per example and feature: sum of x*x, x*b, b*b over the feature's elements
        for name, (a, b) in {"xx": (0, 0), "xb": (0, 1), "bb": (1, 1)}.items():
            total = None
            for k in keys:
                pair = (flat.get(k), base[k])
                prod = (pair[a].double() * pair[b].double()).reshape(n_ex, -1)
                part = prod.new_zeros(n_ex, n_f).scatter_add_(1, position[k].reshape(n_ex, -1), prod)
                total = part if total is None else total + part
            # an Aggregate target: one distance between the whole batch and its perturbed version (captum)
            stats[name] = total.sum(0, keepdim=True) if is_aggregate(self.options.target) else total
        zf = z.to(torch.float64)
        if self.distance == "cosine":
            dot = stats["xx"] @ zf.t() + stats["xb"] @ (1 - zf).t()  # (B, N)
            norm2 = stats["xx"] @ zf.t() + stats["bb"] @ (1 - zf).t()
            eps = 1e-8
            norm_x = stats["xx"].sum(1, keepdim=True).sqrt().clamp(min=eps)
            d = 1 - dot / (norm_x * norm2.clamp(min=0).sqrt().clamp(min=eps))
        else:
            d = ((stats["xx"] - 2 * stats["xb"] + stats["bb"]) @ (1 - zf).t()).clamp(min=0).sqrt()
        return torch.exp(-(d**2) / (2 * self.kernel_width**2))

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        ids, position = feature_positions(flat, keys, self.feature_mask)
        z = self.draw(len(ids), torch.Generator().manual_seed(self.seed)).to(ids.device)
        values = coalition_values(
            hooked,
            flat,
            keys,
            position,
            self.options.target,
            z.shape[0],
            lambda p: z[p],
            self.options.chunk_size,
        )
        names = list(values)
        y = torch.stack([values[t] for t in names], -1).transpose(0, 1)  # (B, N, K)
        w = self.weights(z, flat, keys, position).to(y.device)
        coef = weighted_linear_fit(z, y, w) if self.alpha == 0 else _lasso_fit(z, y, w, self.alpha)
        return {t: spread(coef[..., i], position) for i, t in enumerate(names)}


class KernelShap(Lime):
    """KernelShap: Lime with the Shapley kernel, which makes the fit's coefficients Shapley values. A coalition
    of ``k`` of the ``F`` features is drawn with probability ``(F - 1) / (k (F - k))`` (then uniformly among
    those of size ``k``: the top ``k`` of ``F`` normal draws); the first two samples are all features and none,
    weighted 1e6 (standing in for the kernel's infinite weight), every other sample 1; an unpenalised weighted
    least-squares fit.

    Draws come from a generator seeded with ``seed`` in captum's order (``torch.multinomial`` for ``k``, then
    ``torch.randn``), shared by the examples of a batch. Cost: ``n_samples x B`` rows and one least-squares
    solve for all examples and targets, whatever the number of targets.

    Reads and writes as ``Lime``.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        n_samples: int = 25,
        feature_mask: FeatureMask | None = None,
        seed: int = 0,
        **options: object,
    ) -> None:
        super().__init__(
            target, n_samples=n_samples, feature_mask=feature_mask, alpha=0.0, seed=seed, **options
        )

    def draw(self, n_features: int, gen: torch.Generator) -> torch.Tensor:
        rows = [torch.ones(1, n_features, dtype=torch.bool), torch.zeros(1, n_features, dtype=torch.bool)]
        sizes = torch.arange(n_features, dtype=torch.float32)
        probs = torch.tensor(n_features - 1, dtype=torch.float32) / (sizes * (n_features - sizes))
        probs[0] = 0.0
        if n_features > 1:
            probs = torch.distributions.Categorical(probs).probs.reshape(1, -1)
        while len(rows) < self.n_samples:
            if n_features < 2:  # one feature: no coalition between none and all
                rows.append(rows[len(rows) % 2])
                continue
            k = int(torch.multinomial(probs, 1, True, generator=gen))
            draws = torch.randn(1, n_features, generator=gen)
            rows.append(draws > torch.kthvalue(draws, n_features - k).values.item())
        return torch.cat(rows[: self.n_samples])

    def weights(
        self, z: torch.Tensor, flat: TensorDictBase, keys: list[NestedKey], position: dict
    ) -> torch.Tensor:
        kept = z.sum(1)
        extreme = (kept == 0) | (kept == z.shape[1])
        return torch.where(extreme, 1e6, 1.0).to(torch.float64).reshape(1, -1)
