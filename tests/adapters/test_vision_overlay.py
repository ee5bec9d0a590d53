"""overlay_grid writes a PNG of the expected layout and rejects mismatched shapes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("matplotlib")
from rlhook.plot import overlay_grid  # noqa: E402


def test_writes_a_png(tmp_path):
    import matplotlib.image

    path = overlay_grid(
        torch.rand(3, 3, 16, 16),
        torch.randn(3, 4, 16, 16),
        tmp_path / "o.png",
        row_titles=["a", "b", "c"],
        col_titles=["c0", "c1", "c2", "c3"],
        title="t",
    )
    img = matplotlib.image.imread(path)
    assert img.shape[1] > img.shape[0] > 100  # five columns, three rows: wider than tall


def test_mismatched_shapes():
    with pytest.raises(ValueError, match="same N, H, W"):
        overlay_grid(torch.rand(2, 3, 16, 16), torch.randn(2, 4, 8, 8), "unused.png")
