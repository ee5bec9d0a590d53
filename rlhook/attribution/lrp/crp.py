"""Concept relevance propagation (Achtibat et al., 2023): LRP conditioned on channels ("concepts") of a layer.

A concept is a set of channels at one layer. Its conditional heatmap is the input relevance when, at that
layer, only the concept's channels keep their relevance (the others' is set to zero before it flows on).
Rules are linear in the relevance, so the conditional maps of concepts that partition the channels sum to the
plain LRP map. All K concepts are explained in one call: every example is repeated K times, each copy with its
own channel mask, and the copies share the forward and one backward per target.
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


class _Condition(torch.autograd.Function):
    """Identity forward; backward records the incoming relevance and keeps only the masked channels."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, mask: torch.Tensor, store: dict) -> torch.Tensor:
        ctx.mask, ctx.store = mask, store
        return output.view_as(output)

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        ctx.store["relevance"] = relevance.detach()
        return relevance * ctx.mask.to(relevance.dtype), None, None


class ConceptRelevance(LRP):
    """Conditional LRP heatmaps for K concepts (channel sets) at ``layer``, and each concept's relevance.

    ``concepts``: channel indices (one channel each) or lists of them; ``None``: every channel of the layer
    on its own (K = C). ``channel_dim``: the channel axis of the layer's output (1 for convolutions and
    linear layers). ``heatmaps=False`` computes only the concept relevances, with one plain LRP pass (no
    per-concept copies): ranking every channel of a layer over a data set costs one backward. Other options
    are LRP's (``composite``, ``canonizers``, ``start``, ``chunk_size`` counts
    rows of examples x concepts).

    Reads the attributed inputs. Writes ``("crp", k)`` of shape ``(B, K, *k.shape[1:])`` (the conditional
    heatmaps; ``("crp", name, k)`` per target for a TensorDict target), ``("crp_relevance",)`` (or
    ``("crp_relevance", name)``), shape ``(B, K)``: the relevance reaching each concept at the layer
    (summed over its channels and positions), and ``"crp_delta"``: the sum of all conditional relevances
    minus the target, zero up to stabilisers and biases when the concepts partition the channels.
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

    def input_gradients(self, hooked, flat, keys, target=None):
        name, module = hooked.state.site
        act = layer_outputs(hooked, flat[:1], [hooked.state.site])[name]
        if not isinstance(act, torch.Tensor) or act.dim() <= self.channel_dim:
            raise ValueError(
                f"layer {name!r} gives {tuple(getattr(act, 'shape', ()))}; CRP needs a tensor with a channel "
                f"axis {self.channel_dim}"
            )
        concept_masks = self._masks(act.shape[self.channel_dim]).to(act.device)
        masks = concept_masks if self.heatmaps else torch.ones_like(concept_masks[:1])
        shape = [1] * act.dim()
        shape[self.channel_dim] = masks.shape[1]
        n_ex, n_k = flat.batch_size[0], masks.shape[0]
        target = self.options.target if target is None else target
        size = n_ex * n_k if self.options.chunk_size is None else self.options.chunk_size
        maps: dict = {}
        channel_rel: dict = {}
        for start in range(0, n_ex * n_k, size):
            rows = torch.arange(start, min(start + size, n_ex * n_k), device=act.device)
            concept, ex = rows // n_ex, rows % n_ex
            chunk = flat[ex]
            leaves = [chunk.get(k).detach().requires_grad_(True) for k in keys]
            for k, leaf in zip(keys, leaves):
                chunk.set(k, leaf)
            store: dict = {}
            row_masks = masks[concept].reshape(len(rows), *shape[1:])
            with hooked.run(chunk) as run:
                run.set((name, module), lambda out, m=row_masks, s=store: _Condition.apply(out, m, s))
            scores = evaluate(target, run.output, batch_dims=1)
            first = concept == 0
            for i, (t, score) in enumerate(scores.items()):
                grads = torch.autograd.grad(score.sum(), leaves, retain_graph=i < len(scores) - 1)
                acc = maps.setdefault(t, {k: None for k in keys})
                for k, g in zip(keys, grads):
                    if acc[k] is None:
                        acc[k] = g.new_zeros((n_ex, n_k, *g.shape[1:]))
                    acc[k][ex, concept] = g.detach()
                if "relevance" not in store:
                    raise RuntimeError(
                        f"no relevance reaches layer {name!r}: the target does not depend on it"
                    )
                dims = [d for d in range(store["relevance"].dim()) if d not in (0, self.channel_dim)]
                per_channel = store["relevance"][first].sum(dims) if dims else store["relevance"][first]
                rel = channel_rel.setdefault(t, per_channel.new_zeros((n_ex, masks.shape[1])))
                rel[ex[first]] = per_channel
        hooked.state.concept_relevance = {t: r @ concept_masks.T.to(r.dtype) for t, r in channel_rel.items()}
        return maps

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        sums = super().attribute(hooked, flat, keys)
        if self.start == "gradient":
            with torch.no_grad():
                scores = evaluate(self.options.target, hooked.model_forward(flat.clone(False)), batch_dims=1)
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
