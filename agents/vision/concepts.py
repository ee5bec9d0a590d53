"""Do the channels CRP ranks highest for a class respond to the factors that define the class?

For each class, ``class_channels`` ranks the channels of a layer by their mean concept relevance (CRP) on the
class's own images. ``factor_auc`` scores how well one channel's spatially pooled activation separates images
with a factor value from those without (ROC AUC, 0.5: not at all). ``concept_check`` compares the top channels'
AUCs for the class's shape and texture, and for the nuisance colour, with those of random channel sets of the
same size (the controls).
"""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict

from agents.vision.shapes import CLASSES
from rlhook import HookedModule
from rlhook.adapters.vision import ResNetCanonizer
from rlhook.attribution.lrp import Composite, ConceptRelevance

__all__ = ["class_channels", "concept_check", "factor_auc", "pooled_activations"]


def every_class(out: TensorDict) -> TensorDict:
    return TensorDict({str(c): out["output"][..., c] for c in range(len(CLASSES))}, batch_size=out.batch_size)


def pooled_activations(model: torch.nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """``(N, C)``: the layer's output averaged over positions."""
    hooked = HookedModule(model)
    with torch.no_grad(), hooked.run(TensorDict({"input": images}, batch_size=images.shape[:1])) as run:
        h = run.save(layer)
    return h.resolve().mean((-2, -1))


def class_channels(model: torch.nn.Module, layer: str, data: TensorDict, k: int = 4) -> torch.Tensor:
    """``(n_classes, k)``: per class, the channels with the highest mean CRP relevance on its images."""
    method = ConceptRelevance(
        every_class,
        layer=layer,
        canonizers=[ResNetCanonizer()],
        composite=Composite.epsilon_plus(),
        heatmaps=False,
    )
    with method.prepare(model) as hooked:
        td = hooked(TensorDict({"input": data["image"]}, batch_size=data.batch_size))
    return torch.stack(
        [td["crp_relevance", str(c)][data["label"] == c].mean(0).topk(k).indices for c in range(len(CLASSES))]
    )


def factor_auc(acts: torch.Tensor, present: torch.Tensor) -> np.ndarray:
    """``(C,)`` ROC AUC of each channel's activation for the boolean factor ``present`` ``(N,)``."""
    from sklearn.metrics import roc_auc_score

    y = present.numpy()
    return np.array([roc_auc_score(y, acts[:, c].numpy()) for c in range(acts.shape[1])])


def concept_check(
    model: torch.nn.Module,
    layer: str,
    ranked: TensorDict,
    probe: TensorDict,
    k: int = 4,
    n_controls: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Per class: the top-k CRP channels (ranked on ``ranked``) and, on ``probe`` images, their mean AUC for
    the defining factors (class shape, class texture) and their mean ``|AUC - 0.5|`` for colour (the largest
    over colours), each with its percentile among ``n_controls`` random k-channel sets."""
    top = class_channels(model, layer, ranked, k)
    acts = pooled_activations(model, layer, probe["image"])
    rng = np.random.default_rng(seed)
    controls = np.stack([rng.choice(acts.shape[1], k, replace=False) for _ in range(n_controls)])
    colour = np.max([np.abs(factor_auc(acts, probe["colour"] == v) - 0.5) for v in range(3)], 0)
    rows = []
    for c, name in enumerate(CLASSES):
        scores = {
            "shape": factor_auc(acts, probe["shape"] == c // 2),
            "texture": factor_auc(acts, probe["texture"] == c % 2),
            "colour": colour,
        }
        row = {"class": name, "channels": top[c].tolist()}
        for factor, per_channel in scores.items():
            mine, rand = per_channel[top[c].numpy()].mean(), per_channel[controls].mean(1)
            row[factor] = float(mine)
            row[f"{factor}_percentile"] = float((rand < mine).mean() * 100)
        rows.append(row)
    return rows
