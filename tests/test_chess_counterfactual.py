"""Counterfactual positions: edits checked against python-chess, patching between a position and its edit,
and the "what changes the move" report."""

import random
from pathlib import Path

import pytest
import torch

chess = pytest.importorskip("chess")

from agents.chess.counterfactual import (  # noqa: E402
    AddPiece,
    InvalidEdit,
    MovePiece,
    PlaySibling,
    RemovePiece,
    apply_edit,
    bare,
    edits_td,
    move_index,
    patch_edits,
    square_masks,
    summarise_effects,
    what_changes_the_move,
)
from agents.chess.net import load_checkpoint  # noqa: E402

FINAL = Path(__file__).resolve().parents[1] / "agents" / "chess" / "checkpoints" / "leela_6x32_final.pt"
pytestmark = pytest.mark.usefixtures("one_thread")


def random_positions(n: int, seed: int) -> list:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        board = chess.Board()
        for _ in range(rng.randrange(2, 70)):
            legal = list(board.legal_moves)
            if not legal:
                break
            board.push(rng.choice(legal))
        if not board.is_game_over():
            out.append(board)
    return out


def naive(board, edit):
    """The edit done by hand on a bare copy, with no checks: the oracle's position."""
    b = board.copy(stack=False)
    if isinstance(edit, RemovePiece):
        b.remove_piece_at(chess.parse_square(edit.square))
    elif isinstance(edit, MovePiece):
        piece = b.remove_piece_at(chess.parse_square(edit.from_square))
        b.set_piece_at(chess.parse_square(edit.to_square), piece)
    else:
        b.set_piece_at(chess.parse_square(edit.square), chess.Piece.from_symbol(edit.piece))
    return b


def test_edits_agree_with_python_chess_validity():
    rng = random.Random(1)
    seen = {"ok": 0, "invalid": 0}
    for board in random_positions(80, seed=2):
        occupied = [chess.square_name(s) for s in board.piece_map()]
        empty = [chess.square_name(s) for s in range(64) if board.piece_at(s) is None]
        for edit in (
            RemovePiece(rng.choice(occupied)),
            MovePiece(rng.choice(occupied), rng.choice(empty)),
            AddPiece(rng.choice(empty), rng.choice("PNBRQpnbrq")),
        ):
            if (
                isinstance(edit, RemovePiece)
                and board.piece_at(chess.parse_square(edit.square)).piece_type == 6
            ):
                continue
            expected = naive(board, edit)
            try:
                after = apply_edit(board, edit)
            except InvalidEdit as err:
                seen["invalid"] += 1
                assert not expected.is_valid(), (board.fen(), edit)  # python-chess agrees it is illegal
                assert "illegal position" in str(err)
                continue
            seen["ok"] += 1
            assert after.is_valid() and after.turn == board.turn and not after.move_stack
            assert after.board_fen() == expected.board_fen()
            assert after.castling_rights == expected.clean_castling_rights()
    assert seen["ok"] > 150 and seen["invalid"] > 5, seen


def test_bad_edits_name_what_is_wrong():
    board = chess.Board()
    board.push_uci("e2e4")
    cases = [
        (RemovePiece("e4"), None),
        (RemovePiece("e5"), "e5 is empty"),
        (RemovePiece("e1"), "king cannot be removed"),
        (RemovePiece("z9"), "'z9' is not a square"),
        (MovePiece("e4", "e7"), "e7 holds p"),
        (MovePiece("e3", "e5"), "e3 is empty"),
        (AddPiece("e4", "Q"), "e4 already holds P"),
        (AddPiece("d5", "K"), "kings cannot be added"),
        (AddPiece("c1", "p"), "c1 already holds B"),
        (AddPiece("d1", "x"), "must be one of"),
        (
            AddPiece("e2", "r"),
            "more than 16 pieces; the side not to move is in check",
        ),  # black to move, Ke1 attacked
        (PlaySibling("d2d4"), None),
        (PlaySibling("e2e4"), "the move that was played"),
        (PlaySibling("e2e5"), "not legal where the last move e2e4"),
        (PlaySibling("zz"), "not a UCI move"),
    ]
    for edit, message in cases:
        if message is None:
            after = apply_edit(board, edit)
            assert after.turn == board.turn
            continue
        with pytest.raises(InvalidEdit, match=message):
            apply_edit(board, edit)
    with pytest.raises(InvalidEdit, match="a pawn stands on the first or last rank"):
        apply_edit(chess.Board("4k3/8/8/8/8/8/P7/4K3 w - - 0 1"), MovePiece("a2", "a8"))
    with pytest.raises(InvalidEdit, match="no last move"):
        apply_edit(chess.Board(), PlaySibling("e2e4"))
    with pytest.raises(InvalidEdit, match="unknown edit"):
        apply_edit(board, "remove e4")
    sibling = apply_edit(board, PlaySibling("d2d4"))
    assert [m.uci() for m in sibling.move_stack] == ["d2d4"]  # the history stays, with the sibling move


@pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing")
def test_patching_the_original_into_its_edit_restores_the_move():
    net = load_checkpoint(FINAL)
    original = chess.Board("r1bqkbnr/pppp1ppp/2n5/4p3/3QP3/8/PPP2PPP/RNB1KBNR b KQkq - 0 3")
    edited = apply_edit(original, MovePiece("d4", "d3"))  # the queen steps back out of the knight's reach
    td = edits_td([bare(original)], [edited])
    capture = move_index(original, "c6d4")
    result = patch_edits(net, td, ["inputconv", "block2", "block5"], torch.tensor([capture]))
    assert float(result["original"][0] - result["edited"][0]) > 1.0  # the edit matters to the capture's logit
    for layer in ("inputconv", "block2", "block5"):
        torch.testing.assert_close(result[layer + "/restored"], torch.ones(1), atol=1e-4, rtol=0)
    everywhere = patch_edits(
        net, td, ["block2"], torch.tensor([capture]), torch.ones(1, 1, 8, 8, dtype=torch.bool)
    )
    torch.testing.assert_close(everywhere["block2"], result["block2"], atol=1e-5, rtol=0)
    # the 3x3 stem sees the edit only next to d3 and d4: h8's vector is the same in both runs
    far = patch_edits(net, td, ["inputconv"], torch.tensor([capture]), square_masks([original], ["h8"]))
    assert float(far["inputconv"].abs()) < 1e-5
    near = patch_edits(net, td, ["inputconv"], torch.tensor([capture]), square_masks([original], ["d4"]))
    assert float(near["inputconv"]) > 0.1  # the queen's own square carries part of the capture's logit
    assert square_masks([original], ["d4"])[0, 0, 4, 3]  # black to move: rank 4 is plane row 7 - 3
    with pytest.raises(ValueError, match="as many edited boards as originals"):
        edits_td([original], [])


@pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing")
def test_what_changes_the_move_report():
    net = load_checkpoint(FINAL)
    board = chess.Board("4k3/8/8/3q4/8/8/3R4/4K3 w - - 0 1")  # Rxd5 is the net's move
    effects = what_changes_the_move(net, [board])
    by_square = {e.edit.square: e for e in effects if isinstance(e.edit, RemovePiece)}
    assert set(by_square) == {"d5", "d2"}
    assert by_square["d5"].p_before > 0.9 and by_square["d5"].changed  # nothing to capture any more:
    assert 0 < by_square["d5"].p_after < 0.1  # Rd5 is still legal, but no longer wanted
    assert by_square["d2"].changed and by_square["d2"].p_after == 0.0  # without the rook, no Rxd5
    games = random_positions(6, seed=3)
    effects = what_changes_the_move(net, games, moves_per_piece=1)
    summary = summarise_effects(effects, games)
    assert summary["valid"] > 50 and 0 < summary["changed"] < 1
    assert {"remove", "sibling", "move"} <= set(summary)
    for e in effects:
        if e.valid and not e.changed:
            assert e.p_after > 0  # the same move is still legal and chosen
        if not e.valid:
            assert e.reason
