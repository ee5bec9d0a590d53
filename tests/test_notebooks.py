"""Every notebook in notebooks/ runs top to bottom without an error (nbclient, a fresh kernel, repository root as
its working folder, figures written to a temporary folder), and writes what it says it writes."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NEEDS = {
    "chess.ipynb": ("chess", "matplotlib"),
    "vision_concepts.ipynb": ("matplotlib", "sklearn", "scipy"),
    "language_circuits.ipynb": ("transformers", "matplotlib", "scipy"),
    "recurrent_pendulum.ipynb": ("torchrl", "mujoco", "sklearn", "matplotlib"),
}
WRITES = {
    "chess.ipynb": ("hanging_queen_saliency.png", "hanging_queen_lrp.png", "probes.png", "net.pb.gz"),
    "vision_concepts.ipynb": (
        "attributions.png",
        "concept_relevance.png",
        "conditional_heatmaps.png",
        "relevance_maximisation.png",
        "tcav.png",
        "ablation.png",
    ),
    "language_circuits.ipynb": ("heads.png", "correlation.png"),
    "recurrent_pendulum.ipynb": ("memory_ig_lags.png", "memory_framestack_lags.png"),
}


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch):
    for module in NEEDS.get(path.name, ()):
        pytest.importorskip(module)
    monkeypatch.setenv("RLHOOK_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit notebooks without outputs"
    )
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    for name in WRITES.get(path.name, ()):
        assert (tmp_path / name).stat().st_size > 1000, name
