"""The search and counterfactual report runs end to end on a small set and writes its figures."""

import json
from pathlib import Path

import pytest

pytest.importorskip("chess")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from agents.chess.evidence_report import main  # noqa: E402

FINAL = Path(__file__).resolve().parents[1] / "agents" / "chess" / "checkpoints" / "leela_6x32_final.pt"


@pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing")
def test_evidence_report_writes_figures_and_summary(tmp_path):
    summary = main(tmp_path, n_train=300, n_search=60, simulations=16, n_edit=4)
    names = (
        "search_attribution",
        "net_vs_search",
        "counterfactual_example",
        "counterfactual_pieces",
        "counterfactual_patching",
    )
    for name in names:
        path = tmp_path / f"{name}.png"
        assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["net_vs_search"] == summary["net_vs_search"]
    figures = summary["net_vs_search"]
    assert 0.5 < figures["agree"] < 1 and figures["n"] > 50
    assert summary["counterfactual"]["valid"] > 40 and summary["counterfactual"]["sibling_n"] > 0
    assert "| their_hanging | block1 |" in (tmp_path / "summary.md").read_text()
    patching = summary["counterfactual_patching"]
    assert patching["pairs"] > 0 and patching["mean_gap"] > 0 and set(patching) >= {"inputconv", "block5"}
