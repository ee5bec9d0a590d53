"""Concept relevance propagation: conservation over channels, hand-masked LRP, concept relevance, batching."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torch import nn

import rlhook
from agents.vision.net import BasicBlock, Bottleneck
from rlhook.adapters.vision import ResNetCanonizer
from rlhook.attribution.lrp import LRP, Composite, ConceptRelevance, Epsilon, Norm, Sum, top_examples

FIXTURES = Path(__file__).parents[1] / "fixtures"
_spec = importlib.util.spec_from_file_location(
    "make_zennit_resnet", FIXTURES / "make_zennit_resnet_fixtures.py"
)
zr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zr)
LAYER = "layer1"  # output of the basic blocks: 8 channels


def target(out):
    return out["output"][..., 1]


@pytest.fixture
def net() -> nn.Module:
    model, _ = zr.seeded(zr.tiny_resnet(BasicBlock, Bottleneck))
    return model


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _td(x):
    return TensorDict({"input": x}, batch_size=x.shape[:1])


def _crp(model, x, **kw):
    with ConceptRelevance(target, layer=LAYER, canonizers=[ResNetCanonizer()], **kw).prepare(model) as hooked:
        out = hooked(_td(x))
    assert rlhook.hook_count(model) == 0
    return out


def _lrp(model, x, mask=None, **kw):
    """Plain LRP; ``mask`` (C,) multiplies the relevance at LAYER's output by hand (a tensor hook)."""
    handle = None
    if mask is not None:
        module = model.get_submodule(LAYER)

        def hook(m, i, o):
            if o.requires_grad:
                o.register_hook(lambda g: g * mask.reshape(1, -1, 1, 1).to(g.dtype))

        handle = module.register_forward_hook(hook)
    try:
        with LRP(target, canonizers=[ResNetCanonizer()], **kw).prepare(model) as hooked:
            return hooked(_td(x))
    finally:
        if handle is not None:
            handle.remove()


def test_conditional_maps_over_all_channels_sum_to_the_lrp_map(net, x):
    crp = _crp(net, x)["crp", "input"]
    assert crp.shape == (4, 8, 3, 12, 12)
    lrp = _lrp(net, x)["attr", "input"]
    torch.testing.assert_close(crp.sum(1), lrp, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(crp[:, 0], lrp, atol=1e-3)  # one concept is not the whole map


@pytest.mark.parametrize("concept", [0, 5, [1, 2, 7]])
def test_each_conditional_map_equals_lrp_with_other_channels_masked_by_hand(net, x, concept):
    others = [3, concept] if isinstance(concept, int) else [concept, 4]
    td = _crp(net, x, concepts=others, composite=Composite.epsilon_plus())
    mask = torch.zeros(8)
    mask[concept] = 1.0
    hand = _lrp(net, x, mask, composite=Composite.epsilon_plus())["attr", "input"]
    torch.testing.assert_close(td["crp", "input"][:, 1 if isinstance(concept, int) else 0], hand)


def test_concept_relevance_is_the_relevance_reaching_the_channels(net, x):
    td = _crp(net, x, concepts=[0, [1, 2], 6])
    at_layer = _lrp(net, x, layers=[LAYER])["attr", LAYER].sum((-2, -1))  # (B, C)
    want = torch.stack([at_layer[:, 0], at_layer[:, 1] + at_layer[:, 2], at_layer[:, 6]], 1)
    torch.testing.assert_close(td["crp_relevance"], want)


def test_relevances_alone_equal_those_with_heatmaps(net, x):
    full = _crp(net, x, concepts=[0, [1, 2], 6])
    alone = _crp(net, x, concepts=[0, [1, 2], 6], heatmaps=False)
    assert ("crp", "input") not in alone.keys(True)
    torch.testing.assert_close(alone["crp_relevance"], full["crp_relevance"])
    # without heatmaps the conservation gap is taken at the layer: all channels' relevance minus the target
    every = _crp(net, x, heatmaps=False)
    torch.testing.assert_close(every["crp_delta"], every["crp_relevance"].sum(1) - net(x)[:, 1])


def test_bias_free_net_conserves_each_concept(net, x):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
            if isinstance(m, nn.Linear):
                m.bias.zero_()
    exact = Composite([((Sum, nn.AdaptiveAvgPool2d), Norm(1e-12))], rule=Epsilon(1e-12))
    td = _crp(net, x, composite=exact)
    # each concept's input relevance is the relevance that reached it; all of them together are the logit
    torch.testing.assert_close(
        td["crp", "input"].flatten(2).sum(-1), td["crp_relevance"], rtol=1e-8, atol=1e-12
    )
    torch.testing.assert_close(td["crp_relevance"].sum(1), net(x)[:, 1], rtol=1e-8, atol=1e-12)
    assert td["crp_delta"].abs().max() < 1e-9


def test_batched_equals_one_by_one_and_chunked_equals_unchunked(net, x):
    full = _crp(net, x, concepts=[0, 3, [4, 5]])
    for i in range(len(x)):
        one = _crp(net, x[i : i + 1], concepts=[0, 3, [4, 5]])
        torch.testing.assert_close(one["crp", "input"][0], full["crp", "input"][i])
        torch.testing.assert_close(one["crp_relevance"][0], full["crp_relevance"][i])
    chunked = _crp(net, x, concepts=[0, 3, [4, 5]], chunk_size=5)
    torch.testing.assert_close(chunked["crp", "input"], full["crp", "input"])
    torch.testing.assert_close(chunked["crp_relevance"], full["crp_relevance"])


def test_several_classes_in_one_call(net, x):
    classes = lambda out: TensorDict(
        {f"c{k}": out["output"][..., k] for k in range(3)}, batch_size=out.batch_size
    )  # noqa: E731
    with ConceptRelevance(classes, layer=LAYER, canonizers=[ResNetCanonizer()]).prepare(net) as hooked:
        td = hooked(_td(x))
    torch.testing.assert_close(td["crp", "c1", "input"], _crp(net, x)["crp", "input"])
    assert td["crp_relevance", "c2"].shape == (4, 8)
    assert not torch.allclose(td["crp_relevance", "c0"], td["crp_relevance", "c2"])


def test_top_examples():
    rel = torch.tensor([[0.1, -3.0], [2.0, 0.5], [1.0, 1.0]])
    assert top_examples(rel, 2).tolist() == [[1, 2], [2, 1]]
    assert top_examples(rel, 1, absolute=True).tolist() == [[1], [0]]
    with pytest.raises(ValueError, match="n must be"):
        top_examples(rel, 4)


@pytest.mark.parametrize(
    ("concepts", "match"), [([9], r"\[0, 8\)"), ([[]], "non-empty"), ([], "explains nothing")]
)
def test_bad_concepts(net, x, concepts, match):
    with pytest.raises(ValueError, match=match):
        _crp(net, x, concepts=concepts)
    assert rlhook.hook_count(net) == 0


def test_layer_must_be_one_module(net):
    with pytest.raises(ValueError, match="exactly one"):
        with ConceptRelevance(target, layer=r"layer1\.\d").prepare(net):
            pass


def test_gradient_start_matches_lrp(net, x):
    logp = lambda out: out["output"].log_softmax(-1)[..., 1]  # noqa: E731
    with ConceptRelevance(logp, layer=LAYER, canonizers=[ResNetCanonizer()], start="gradient").prepare(
        net
    ) as h:
        crp = h(_td(x))
    with LRP(logp, canonizers=[ResNetCanonizer()], start="gradient", layers=[LAYER]).prepare(net) as h:
        lrp = h(_td(x))
    torch.testing.assert_close(crp["crp", "input"].sum(1), lrp["attr", "input"])
    torch.testing.assert_close(crp["crp_relevance"], lrp["attr", LAYER].sum((-2, -1)))
