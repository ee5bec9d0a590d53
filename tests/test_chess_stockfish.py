"""Optional Stockfish labels (agents.chess.stockfish): checked against positions whose answer is known (a mate in
one, a free queen, a queen down), against the teacher's positions and concepts, and for determinism. Skipped
where no Stockfish binary is installed (Debian: ``apt-get install stockfish``); the error paths always run."""

import numpy as np
import pytest

chess = pytest.importorskip("chess")

from agents.chess import stockfish as sf_module  # noqa: E402
from agents.chess.positions import CONCEPTS, make_dataset, unpack_legal  # noqa: E402
from agents.chess.stockfish import StockfishLabeller, find_stockfish  # noqa: E402
from agents.chess.teacher import LOSS, WIN  # noqa: E402
from envs.chess.moves import move_to_index  # noqa: E402

needs_stockfish = pytest.mark.skipif(find_stockfish() is None, reason="Stockfish is not installed")


@needs_stockfish
def test_known_positions():
    mate = chess.Board("6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1")  # Rd8#
    free_queen = chess.Board("rnb1kbnr/pppp1ppp/8/4p3/4P2q/5N2/PPPP1PPP/RNBQKB1R w KQkq - 0 1")  # Nxh4
    queen_down = chess.Board("3qk3/pppppppp/8/8/8/8/PPPPPPPP/4K3 w - - 0 1")
    with StockfishLabeller(depth=6) as sf:
        move, index, wdl = sf(mate)
        after = mate.copy()
        after.push(move)
        assert after.is_checkmate() and wdl == WIN and index == move_to_index(mate, move)
        move, _, wdl = sf(free_queen)
        assert move.to_square == chess.H4 and wdl == WIN
        assert sf(queen_down)[2] == LOSS
        assert sf(queen_down.mirror())[2] == LOSS  # colours swapped: still the side to move's view
        queen_up = queen_down.copy()
        queen_up.turn = chess.BLACK
        assert sf(queen_up)[2] == WIN  # the same pieces, the other side to move


@needs_stockfish
def test_dataset_labels_are_legal_deterministic_and_keep_the_concepts():
    teacher = make_dataset(24, seed=3, chunk=12)
    ours = make_dataset(24, seed=3, chunk=12, labels="stockfish", depth=4)
    again = make_dataset(24, seed=3, chunk=12, workers=2, labels="stockfish", depth=4)
    np.testing.assert_array_equal(ours["words"], teacher["words"])  # same positions
    for key in CONCEPTS:
        np.testing.assert_array_equal(ours[key], teacher[key])
    for key in ours:
        np.testing.assert_array_equal(ours[key], again[key])
    legal = unpack_legal(ours["legal"])
    assert legal[np.arange(24), ours["move"]].all()
    assert set(ours["wdl"].tolist()) <= {0, 1, 2}
    assert (ours["move"] != teacher["move"]).any()  # a different labeller, not a copy


@needs_stockfish
def test_engine_closes_after_an_error():
    with pytest.raises(KeyError), StockfishLabeller(depth=1) as sf:
        engine = sf._engine
        raise KeyError("user code failed")
    assert sf._engine is None
    with pytest.raises(chess.engine.EngineTerminatedError):
        engine.ping()


@needs_stockfish
def test_training_cli_with_stockfish_labels(tmp_path):
    from agents.chess.train import load_or_make, main

    history = main(
        ["--positions", "48", "--holdout", "16", "--steps", "2", "--batch", "16", "--blocks", "1"]
        + ["--filters", "8", "--snapshots", "0", "--labels", "stockfish", "--depth", "3"]
        + ["--data-cache", str(tmp_path / "d.npz"), "--out", str(tmp_path), "--no-progress"]
    )
    assert (tmp_path / "leela_1x8_final.pt").exists() and 0 <= history[-1]["top1"] <= 1
    # the cache remembers its labeller: asking for teacher labels makes the data again
    cached = load_or_make(48, 0, tmp_path / "d.npz", 1, False, labels="stockfish", depth=3)
    teacher = load_or_make(48, 0, tmp_path / "d.npz", 1, False)
    np.testing.assert_array_equal(teacher["move"], make_dataset(48, 0)["move"])
    assert (cached["move"] != teacher["move"]).any()


def test_missing_engine_and_bad_options_are_explained(monkeypatch):
    monkeypatch.setattr(sf_module, "find_stockfish", lambda: None)
    with pytest.raises(FileNotFoundError, match="apt-get install stockfish"):
        StockfishLabeller()
    with pytest.raises(ValueError, match="depth must be >= 1"):
        StockfishLabeller(depth=0, path="stockfish")
    with pytest.raises(RuntimeError, match="context manager"):
        StockfishLabeller(path="stockfish")(chess.Board())
    with pytest.raises(ValueError, match=r"labels must be one of \('teacher', 'stockfish'\)"):
        make_dataset(2, seed=0, labels="gnuchess")
