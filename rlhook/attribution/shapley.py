"""Shapley values of features: sampled over random orderings (ShapleyValueSampling) or exact over every
coalition (ShapleyValues). Every entry of a TensorDict target comes from the same forwards."""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.coalitions import coalition_values
from rlhook.attribution.features import FeatureMask, feature_positions, spread
from rlhook.attribution.occlusion import PerturbationMethod
from rlhook.methods import Prepared, check_count
from rlhook.targets import Target

__all__ = ["ShapleyValueSampling", "ShapleyValues"]


class ShapleyValueSampling(PerturbationMethod):
    """Shapley values estimated over ``n_samples`` random orderings of the features (Castro et al., 2009).

    For each ordering, start from the baseline and add the features one by one (inputs taken from ``x``);
    the change of the target when feature ``f`` is added is ``f``'s marginal contribution. A feature's value
    is the mean of its contributions, given to every element of the feature. The contributions of one
    ordering sum to ``f(x) - f(baseline)`` (so do the maps, summed over features).

    Orderings are ``torch.randperm(F)`` draws from a generator seeded with ``seed`` (captum draws the same
    ones after ``torch.manual_seed(seed)`` when the ids are ``0..F-1``), shared by the examples of a batch.
    Cost: ``(n_samples * F + 1) x B`` rows, whatever the number of targets.

    Reads the attributed inputs, ``("baseline", k)`` and ``("feature_mask", k)`` (see ``FeatureAblation``);
    writes ``("attr", k)`` (or ``("attr", name, k)``), same shape as ``k``.
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
        super().__init__(target, **options)
        check_count("n_samples", n_samples)
        self.n_samples, self.feature_mask, self.seed = n_samples, feature_mask, seed

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        ids, position = feature_positions(flat, keys, self.feature_mask)
        n_f, n_s = len(ids), self.n_samples
        device = ids.device
        gen = torch.Generator().manual_seed(self.seed)
        orders = torch.stack([torch.randperm(n_f, generator=gen) for _ in range(n_s)]).to(device)
        rank = orders.argsort(1)  # rank[s, f]: the step at which ordering s adds feature f
        last = n_s * n_f  # one more coalition: the empty one (the baseline)

        def included(p: torch.Tensor) -> torch.Tensor:
            s, step = (p // n_f).clamp(max=n_s - 1), p % n_f
            return (rank[s] <= step[:, None]) & (p < last)[:, None]

        values = coalition_values(
            hooked, flat, keys, position, self.options.target, last + 1, included, self.options.chunk_size
        )
        result: dict = {}
        for t, v in values.items():  # (S * F + 1, B)
            steps = v[:last].reshape(n_s, n_f, -1)
            before = torch.cat([v[last:].expand(n_s, 1, -1), steps[:, :-1]], 1)
            gain = steps - before  # gain[s, i]: what the i-th feature of ordering s added
            phi = gain.gather(1, rank[:, :, None].expand(-1, -1, gain.shape[-1])).mean(0)  # (F, B)
            result[t] = spread(phi.t(), position)
        return result


class ShapleyValues(PerturbationMethod):
    """Exact Shapley values of the features: ``phi_f = sum over coalitions S without f of
    |S|! (F - |S| - 1)! / F! * (v(S + f) - v(S))``, with ``v(S)`` the target at the inputs with the features
    of ``S`` kept and the rest at the baseline. They sum to ``f(x) - f(baseline)`` (efficiency).

    Evaluates all ``2^F`` coalitions once (captum's ShapleyValues walks all ``F!`` orderings, ``F * F!``
    forwards, to the same values); ``F`` is capped by ``max_features``. Cost: ``2^F x B`` rows, whatever the
    number of targets.

    Reads the attributed inputs, ``("baseline", k)`` and ``("feature_mask", k)`` (see ``FeatureAblation``);
    writes ``("attr", k)`` (or ``("attr", name, k)``), same shape as ``k``.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        feature_mask: FeatureMask | None = None,
        max_features: int = 14,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        check_count("max_features", max_features, maximum=30)
        self.feature_mask, self.max_features = feature_mask, max_features

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        ids, position = feature_positions(flat, keys, self.feature_mask)
        n_f = len(ids)
        if n_f > self.max_features:
            raise ValueError(
                f"exact Shapley values over {n_f} features need 2^{n_f} coalitions per example, more than "
                f"max_features={self.max_features} allows: group elements with feature_mask=..., raise "
                "max_features, or use ShapleyValueSampling"
            )
        bit = 2 ** torch.arange(n_f, device=ids.device)
        coalitions = torch.arange(2**n_f, device=ids.device)
        members = (coalitions[:, None] & bit) > 0  # (2^F, F)

        values = coalition_values(
            hooked,
            flat,
            keys,
            position,
            self.options.target,
            2**n_f,
            lambda p: members[p],
            self.options.chunk_size,
        )
        size = members.sum(1)
        weight = torch.tensor(
            [math.factorial(s) * math.factorial(n_f - s - 1) / math.factorial(n_f) for s in range(n_f)],
            dtype=torch.float64,
            device=ids.device,
        )
        result: dict = {}
        for t, v in values.items():  # (2^F, B)
            phi = v.new_zeros(n_f, v.shape[1])
            for f in range(n_f):
                without = coalitions[~members[:, f]]
                w = weight[size[without]].to(v.dtype)
                phi[f] = w @ (v[without | bit[f]] - v[without])
            result[t] = spread(phi.t(), position)
        return result
