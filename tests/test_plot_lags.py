"""Lag x feature profiles and the probe-controls figure."""

import pytest
import torch

pytest.importorskip("matplotlib")

from rlhook.plot.controls import probe_controls_figure  # noqa: E402
from rlhook.plot.lags import lag_feature_figure, lag_profile  # noqa: E402


def test_lag_profile_means_over_valid_windows_with_lag_zero_first():
    attr = torch.zeros(2, 3, 2)
    attr[0, 2] = torch.tensor([1.0, -2.0])  # window 0, current step
    attr[1, 2] = torch.tensor([3.0, 0.0])
    attr[0, 0] = torch.tensor([5.0, 5.0])  # lag 2 of window 0: marked invalid below
    attr[1, 0] = torch.tensor([-1.0, 1.0])
    valid = torch.tensor([[False, True, True], [True, True, True]])
    prof = lag_profile(attr, valid)
    torch.testing.assert_close(prof[0], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(prof[2], torch.tensor([1.0, 1.0]))  # only window 1 counts at lag 2
    with pytest.raises(ValueError, match=r"\[N, L, F\]"):
        lag_profile(torch.zeros(3, 2))


def test_figures_are_written(tmp_path):
    attr = torch.randn(10, 5, 3)
    path = lag_feature_figure(attr, tmp_path / "lags.png", feature_names=["a", "b", "c"], title="t")
    assert path.stat().st_size > 5000
    rows = [
        {"features": f, "layer": "x", "quantity": q, "metric": "r2", "score": s, "shuffled": -0.1}
        for f, s in (("trained", 0.9), ("random_init", 0.3))
        for q in ("w1", "w2")
    ]
    assert probe_controls_figure(rows, tmp_path / "probes.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="at least one"):
        probe_controls_figure([], tmp_path / "none.png")
