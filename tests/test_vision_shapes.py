"""The shapes task, its shipped ResNet, and the CRP concept check against random-channel controls."""

from __future__ import annotations

import pytest
import torch

from agents import checkpoints
from agents.vision.shapes import CLASSES, make_shapes
from agents.vision.train import CHECKPOINT, accuracy, load_shapes_resnet


def test_generated_deterministically_with_the_documented_factors():
    a, b = make_shapes(64, seed=3), make_shapes(64, seed=3)
    assert (a == b).all() and not torch.equal(a["image"], make_shapes(64, seed=4)["image"])
    assert a["image"].shape == (64, 3, 32, 32) and 0 <= a["image"].min() and a["image"].max() <= 1
    assert torch.equal(a["label"], 2 * a["shape"] + a["texture"]) and len(CLASSES) == 6
    img = a["image"]
    grey = img.flatten(2).median(-1).values[..., None, None]  # the background dominates every image
    shape = (img - grey).abs().amax(1) > 0.25
    for i in range(64):
        fg = img[i][:, shape[i]]
        assert int(fg.mean(1).argmax()) == int(a["colour"][i])  # the dominant channel is the colour
        rows = shape[i].any(1).nonzero().flatten()
        # striped shapes alternate bright and dark rows: the row-wise brightness inside the shape varies
        brightness = torch.stack([img[i][:, r][:, shape[i][r]].amax() for r in rows])
        assert (brightness.std() > 0.15) == bool(a["texture"][i]), i
    with pytest.raises(ValueError, match="n >= 1"):
        make_shapes(0)


def test_shipped_net_is_small_digest_checked_and_accurate():
    assert CHECKPOINT.stat().st_size <= 2_000_000
    assert "vision/shapes_resnet.pt" in checkpoints.MANIFEST.read_text()
    test = make_shapes(1000, seed=11)  # images it never saw
    assert accuracy(load_shapes_resnet(), test["image"], test["label"]) >= 0.98


def test_crp_top_channels_respond_to_the_defining_factors(one_thread):
    """Per class, the 4 channels of layer3 with the highest CRP relevance separate the class's shape and
    texture better than random 4-channel sets, and barely respond to colour (a nuisance factor)."""
    pytest.importorskip("sklearn")
    from agents.vision.concepts import concept_check

    rows = concept_check(load_shapes_resnet(), "layer3", make_shapes(120, seed=5), make_shapes(600, seed=6))
    for row in rows:
        assert row["shape_percentile"] > 80 and row["texture_percentile"] > 80, row
        assert row["shape"] > 0.6 and row["texture"] > 0.65, row
        assert row["colour"] < 0.1, row
    mean_pct = sum(r["shape_percentile"] + r["texture_percentile"] for r in rows) / (2 * len(rows))
    assert mean_pct > 95
