"""Permutation feature importance (Breiman, 2001; Fisher et al., 2019) on a batch."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.features import FeatureMask, feature_positions, spread
from rlhook.attribution.occlusion import PerturbationMethod, drops_from, perturbation_scores
from rlhook.methods import Prepared
from rlhook.targets import Target

__all__ = ["FeaturePermutation"]


class FeaturePermutation(PerturbationMethod):
    """Shuffle each feature across the batch (example ``i`` takes the feature's values of example
    ``perm[i]``) and record ``f(x) - f(x shuffled)`` per example on every element of the feature.

    Needs a batch of at least two examples; results depend on the batch (the other examples are the
    replacement values). One permutation per feature, ``torch.randperm(B)`` from a generator seeded with
    ``seed`` and redrawn while it is the identity, in increasing feature id (captum's draws after
    ``torch.manual_seed(seed)``; a feature spanning several inputs moves with one permutation, where captum
    draws one per input). Cost: ``F x B`` rows, whatever the number of targets.

    Reads the attributed inputs and ``("feature_mask", k)`` (see ``FeatureAblation``); writes ``("attr", k)``
    (or ``("attr", name, k)``), same shape as ``k``.
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        feature_mask: FeatureMask | None = None,
        seed: int = 0,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        self.feature_mask, self.seed = feature_mask, seed

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        n_ex = flat.batch_size[0]
        if n_ex < 2:
            raise ValueError(
                f"FeaturePermutation shuffles features across the batch and needs at least 2 examples, got "
                f"{n_ex}; for one example use FeatureAblation (features replaced by a baseline)"
            )
        ids, position = feature_positions(flat, keys, self.feature_mask)
        gen = torch.Generator().manual_seed(self.seed)
        identity = torch.arange(n_ex)
        perms = []
        for _ in range(len(ids)):
            perm = torch.randperm(n_ex, generator=gen)
            while bool((perm == identity).all()):
                perm = torch.randperm(n_ex, generator=gen)
            perms.append(perm)
        source = torch.stack(perms).to(ids.device)  # (F, B): example whose values example b takes
        xs = {k: flat.get(k) for k in keys}
        score = drops_from(hooked, flat, self.options.target)

        def perturb(rows: TensorDictBase, p: torch.Tensor, ex: torch.Tensor) -> None:
            src = source[p, ex]
            for k in keys:
                pos = position[k][ex]
                hit = pos == p.reshape(-1, *([1] * (pos.dim() - 1)))
                rows.set(k, torch.where(hit, xs[k][src], xs[k][ex]))

        diffs = perturbation_scores(
            hooked, flat, len(ids), perturb, score, self.options.chunk_size, self.options.target
        )
        return {t: spread(d.t(), position) for t, d in diffs.items()}
