"""Concept relevance propagation (Achtibat et al., 2023): LRP conditioned on channels ("concepts") of a layer.

A concept is a set of channels at one layer. Its conditional heatmap is the input relevance when, at that
layer, only the concept's channels keep their relevance (the others' is set to zero before it flows on).
Rules are linear in the relevance, so the conditional maps of concepts that partition the channels sum to the
plain LRP map (relevance that bypasses the layer, on a skip path around it, belongs to no concept). All K
concepts are explained in one call, as K per-target IG maps are: one shared forward, one backward from each
target to the layer, then one backward per concept from the layer to the inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import layer_outputs
from rlhook.attribution.lrp.method import LRP
from rlhook.hooks import Hooks
from rlhook.methods import Prepared
from rlhook.paths import Path
from rlhook.targets import Target, evaluate

__all__ = ["ConceptRelevance", "top_examples"]

Concepts = Sequence[int | Sequence[int]]


class ConceptRelevance(LRP):
    """Conditional LRP heatmaps for K concepts (channel sets) at ``layer``, and each concept's relevance.

    ``concepts``: channel indices (one channel each) or lists of them; ``None``: every channel of the layer
    on its own (K = C). ``channel_dim``: the channel axis of the layer's output (1 for convolutions and
    linear layers; the layer's last call if it runs several times). ``heatmaps=False`` computes only the concept
    relevances (one backward per target, to the layer): ranking every channel of a layer over a data set. Other options
    are LRP's (``composite``, ``canonizers``, ``start``, ``chunk_size``).

    Reads the attributed inputs. Writes ``("crp", k)`` of shape ``(B, K, *k.shape[1:])`` (the conditional
    heatmaps; ``("crp", name, k)`` per target for a TensorDict target), ``("crp_relevance",)`` (or
    ``("crp_relevance", name)``), shape ``(B, K)``: the relevance reaching each concept at the layer
    (summed over its channels and positions), and ``"crp_delta"``: the sum of all conditional relevances
    minus the target, zero up to stabilisers and biases when the concepts partition the channels (with
    ``heatmaps=False``: the relevance reaching all channels of the layer minus the target).
    ``chunk_size`` counts examples per forward.
    """

    keys = {"attr": "crp", "delta": "crp_delta", "relevance": "crp_relevance"}

    def __init__(
        self,
        target: Target | None = None,
        *,
        layer: Path,
        concepts: Concepts | None = None,
        channel_dim: int = 1,
        heatmaps: bool = True,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        if self.options.layers is not None:
            raise ValueError("ConceptRelevance conditions on one layer=...; layers=[...] is not supported")
        if channel_dim < 1:
            raise ValueError(f"channel_dim counts from the batch axis 0 and must be >= 1, got {channel_dim}")
        self.layer, self.concepts, self.channel_dim, self.heatmaps = layer, concepts, channel_dim, heatmaps

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        super().setup(hooked, hooks)
        sites = hooked.resolve(self.layer)
        if len(sites) != 1:
            raise ValueError(f"layer={self.layer!r} names {len(sites)} modules; CRP needs exactly one")
        hooked.state.site = sites[0]

    def _masks(self, n_channels: int) -> torch.Tensor:
        """``(K, C)`` 0/1 masks of the concepts."""
        concepts = range(n_channels) if self.concepts is None else self.concepts
        masks = torch.zeros(len(concepts), n_channels)
        for j, c in enumerate(concepts):
            idx = [c] if isinstance(c, int) else list(c)
            bad = [i for i in idx if not isinstance(i, int) or not 0 <= i < n_channels]
            if bad or not idx:
                raise ValueError(
                    f"concept #{j} {c!r}: a concept is a channel index or a non-empty list of them, in "
                    f"[0, {n_channels}) for layer {self.layer!r}"
                )
            masks[j, idx] = 1.0
        if not len(masks):
            raise ValueError("concepts=[] explains nothing; give channel indices or None for every channel")
        return masks

    def input_gradients(self, hooked, flat, keys, target=None, values=None):
        site = hooked.state.site
        name = site[0]
        probe = layer_outputs(hooked, flat[:1], [site])[name]
        if not isinstance(probe, torch.Tensor) or probe.dim() <= self.channel_dim:
            raise ValueError(
                f"layer {name!r} gives {tuple(getattr(probe, 'shape', ()))}; CRP needs a tensor with a channel "
                f"axis {self.channel_dim}"
            )
        masks = self._masks(probe.shape[self.channel_dim]).to(probe.device)
        shape = [1] * probe.dim()
        shape[self.channel_dim] = masks.shape[1]
        n_ex, n_k = flat.batch_size[0], masks.shape[0]
        target = self.options.target if target is None else target
        size = n_ex if self.options.chunk_size is None else self.options.chunk_size
        maps: dict = {}
        concept_rel: dict = {}
        hooked.state.layer_total = {}
        for start in range(0, n_ex, size):
            ex = torch.arange(start, min(start + size, n_ex), device=probe.device)
            chunk = flat[ex]
            leaves = [chunk.get(k).detach().requires_grad_(True) for k in keys]
            for k, leaf in zip(keys, leaves):
                chunk.set(k, leaf)
            with hooked.run(chunk) as run:
                saved = run.save(site)
            act = saved.resolve()
            scores = evaluate(target, run.output, batch_dims=1)
            if values is not None:  # the targets' values, read by LRP.attribute (no second forward)
                for t, score in scores.items():
                    values[t] = torch.cat([values[t], score.detach()]) if t in values else score.detach()
            for i, (t, score) in enumerate(scores.items()):
                # relevance reaching the layer (one backward from the target), then one per concept below it
                (rel,) = torch.autograd.grad(score.sum(), act, retain_graph=True, allow_unused=True)
                if rel is None:
                    raise RuntimeError(
                        f"no relevance reaches layer {name!r}: the target does not depend on it"
                    )
                dims = [d for d in range(rel.dim()) if d not in (0, self.channel_dim)]
                per_channel = rel.sum(dims) if dims else rel
                cr = concept_rel.setdefault(t, rel.new_zeros((n_ex, n_k)))
                cr[ex] = (per_channel @ masks.T.to(rel.dtype)).detach()
                total = hooked.state.layer_total.setdefault(t, rel.new_zeros((n_ex, 1)))
                total[ex] = per_channel.detach().reshape(len(ex), -1).sum(-1, keepdim=True)
                if not self.heatmaps or not keys:
                    continue
                acc = maps.setdefault(t, {k: None for k in keys})
                last = i == len(scores) - 1
                for j in range(n_k):
                    grads = torch.autograd.grad(
                        act,
                        leaves,
                        rel * masks[j].reshape(shape).to(rel.dtype),
                        retain_graph=not (last and j == n_k - 1),
                        allow_unused=True,
                    )
                    for k, g, leaf in zip(keys, grads, leaves):
                        if acc[k] is None:
                            acc[k] = leaf.new_zeros((n_ex, n_k, *leaf.shape[1:]))
                        if g is not None:
                            acc[k][ex, j] = g.detach()
        hooked.state.concept_relevance = concept_rel
        if self.heatmaps:
            return maps
        # no heatmaps: LRP's conservation gap is taken at the layer (all channels' relevance minus the target)
        totals = {t: hooked.state.layer_total[t] for t in concept_rel}
        return {
            t: {k: (v if i == 0 else torch.zeros_like(v)) for i, k in enumerate(keys)}
            for t, v in totals.items()
        }

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        sums = super().attribute(hooked, flat, keys)
        if self.start == "gradient":
            scores = hooked.state.scores  # from the forward of the gradient (LRP.attribute)
            rel = hooked.state.concept_relevance
            for t in rel:
                rel[t] = rel[t] * scores[t].reshape(-1, 1).to(rel[t].dtype)
        return sums if self.heatmaps else {t: {} for t in sums}

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        td = super().apply(hooked, td)
        for t, rel in hooked.state.concept_relevance.items():
            td.set(self.key("relevance", t), rel.reshape(*td.batch_size, rel.shape[-1]).detach())
        return td


def top_examples(relevance: torch.Tensor, n: int = 8, *, absolute: bool = False) -> torch.Tensor:
    """Relevance maximisation: indices ``(K, n)`` of the ``n`` examples with the highest relevance for each
    concept, from concept relevances ``(N, K)`` gathered over a data set (``("crp_relevance",)`` rows)."""
    if relevance.dim() != 2:
        raise ValueError(f"top_examples needs concept relevances (N, K), got shape {tuple(relevance.shape)}")
    if not 0 < n <= relevance.shape[0]:
        raise ValueError(f"n must be in [1, N={relevance.shape[0]}], got {n}")
    values = relevance.abs() if absolute else relevance
    return values.topk(n, dim=0).indices.T
