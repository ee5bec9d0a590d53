"""Shipped checkpoints are digest-checked before they load; damaged files give an error naming them."""

from __future__ import annotations

import shutil

import pytest

from agents import checkpoints


def test_every_shipped_checkpoint_matches_its_digest():
    entries = checkpoints._manifest()
    assert {"pendulum/checkpoint.pt", "chess/checkpoints/leela_6x32_final.pt"} <= set(entries)
    for name, value in entries.items():
        assert checkpoints.digest(checkpoints.ROOT / name) == value, name


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A copy of the shipped pendulum checkpoint listed in a manifest of its own."""
    path = tmp_path / "pendulum" / "checkpoint.pt"
    path.parent.mkdir()
    shutil.copy(checkpoints.ROOT / "pendulum" / "checkpoint.pt", path)
    monkeypatch.setattr(checkpoints, "ROOT", tmp_path)
    monkeypatch.setattr(checkpoints, "MANIFEST", tmp_path / "checkpoints.sha256")
    checkpoints.MANIFEST.write_text(f"{checkpoints.digest(path)}  pendulum/checkpoint.pt\n")
    return path


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["middle", "header"])
def test_a_flipped_bit_is_refused_by_name(shipped, where):
    pytest.importorskip("torchrl")
    from agents.pendulum.nets import load_agent

    load_agent(shipped)  # intact: loads
    flip(shipped, shipped.stat().st_size // 2 if where == "middle" else 40)
    with pytest.raises(
        checkpoints.CorruptCheckpointError, match="checkpoint.pt is not the shipped checkpoint"
    ):
        load_agent(shipped)


def test_an_unlisted_damaged_file_gets_a_clear_error(tmp_path):
    path = tmp_path / "mine.pt"
    data = (checkpoints.ROOT / "pendulum" / "checkpoint.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut short: not a readable archive
    with pytest.raises(checkpoints.CorruptCheckpointError, match="mine.pt cannot be read") as info:
        checkpoints.load(path)
    assert "weights_only=False" not in str(info.value)


def test_saving_over_a_shipped_checkpoint_records_its_digest(shipped):
    pytest.importorskip("torchrl")
    from agents.pendulum.nets import load_agent, read_checkpoint, save_agent

    actor, critic, stats = load_agent(shipped)
    state = read_checkpoint(shipped)
    save_agent(shipped, actor, critic, stats, config=state["config"], meta={"note": "retrained"})
    assert checkpoints._manifest()["pendulum/checkpoint.pt"] == checkpoints.digest(shipped)
    assert read_checkpoint(shipped)["meta"] == {"note": "retrained"}
