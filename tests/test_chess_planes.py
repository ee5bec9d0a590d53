"""lc0 112-plane encoding and 1858-move index, checked against expectations built from python-chess."""

import random

import numpy as np
import pytest
import torch

chess = pytest.importorskip("chess")

from envs.chess.moves import (  # noqa: E402
    CONV_GATHER,
    CONV_POLICY_MAP,
    MOVE_INDEX,
    POLICY_INDEX,
    conv_flat_index,
    index_to_move,
    legal_move_indices,
    legal_move_mask,
    move_to_index,
)
from envs.chess.planes import board_to_bitplanes, board_to_planes, boards_to_planes, unpack_planes  # noqa: E402

SPECIAL_FENS = [
    "r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R w KQkq - 0 1",  # all castling rights, white
    "r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R b Kq - 5 9",  # partial rights, black to move
    "r3k2r/8/8/8/8/8/8/R3K2R b KQkq - 0 1",  # black can castle both ways
    "rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3",  # white en passant
    "rnbqkbnr/pppp1ppp/8/8/3Pp3/8/PPP1PPPP/RNBQKBNR b KQkq d3 0 2",  # black en passant
    "1r2k3/P1P5/8/8/8/8/5p1p/4K1R1 w - - 0 1",  # white promotions, straight and capturing
    "1r2k3/P1P5/8/8/8/8/5p1p/4K1R1 b - - 0 1",  # black promotions
    "8/8/8/4k3/8/8/8/4K3 w - - 99 80",  # bare kings, rule-50 counter 99
]


def random_boards(n: int, seed: int) -> list:
    """Boards from random games, each keeping its move stack, both colours to move."""
    rng = random.Random(seed)
    boards = []
    while len(boards) < n:
        board = chess.Board()
        for _ in range(rng.randrange(1, 120)):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(rng.choice(moves))
        boards.append(board)
    return boards


def expected_planes(board) -> torch.Tensor:
    """Reference encoding written square by square from the format description."""
    planes = torch.zeros(112, 8, 8)
    us = board.turn
    view = (lambda sq: sq) if us == chess.WHITE else chess.square_mirror
    history = board.copy()
    for t in range(8):
        for sq, piece in history.piece_map().items():
            v = view(sq)
            offset = piece.piece_type - 1 + (0 if piece.color == us else 6)
            planes[13 * t + offset, v // 8, v % 8] = 1
        if history.is_repetition(2):
            planes[13 * t + 12] = 1
        if not history.move_stack:
            break
        history.pop()
    for i, (color, side) in enumerate([(us, "q"), (us, "k"), (not us, "q"), (not us, "k")]):
        rights = board.has_queenside_castling_rights if side == "q" else board.has_kingside_castling_rights
        planes[104 + i] = float(rights(color))
    planes[108] = float(us == chess.BLACK)
    planes[109] = board.halfmove_clock
    planes[111] = 1
    return planes


def expected_index(board, move) -> int:
    """Reference move index: king->rook castling, knight promotion as a plain move, black mirrored."""
    to = move.to_square
    if board.is_kingside_castling(move):
        to = chess.square(7, chess.square_rank(move.from_square))
    elif board.is_queenside_castling(move):
        to = chess.square(0, chess.square_rank(move.from_square))
    frm = move.from_square
    if board.turn == chess.BLACK:
        frm, to = chess.square_mirror(frm), chess.square_mirror(to)
    uci = chess.square_name(frm) + chess.square_name(to)
    if move.promotion and move.promotion != chess.KNIGHT:
        uci += chess.piece_symbol(move.promotion)
    return POLICY_INDEX.index(uci)


def all_test_boards():
    boards = [chess.Board(f) for f in SPECIAL_FENS] + random_boards(60, seed=7)
    repeated = chess.Board()
    for uci in ["g1f3", "g8f6", "f3g1", "f6g8", "g1f3"]:
        repeated.push_uci(uci)
    return boards + [repeated]


def test_policy_index_follows_its_rule():
    assert len(POLICY_INDEX) == 1858 and len(set(POLICY_INDEX)) == 1858
    plain = [m for m in POLICY_INDEX if len(m) == 4]
    assert len(plain) == 1792 and POLICY_INDEX[:1792] == tuple(plain)
    squares = [(chess.parse_square(m[:2]), chess.parse_square(m[2:])) for m in plain]
    assert squares == sorted(squares)  # from-square major, destinations ascending
    for frm, to in squares:
        df = abs(chess.square_file(frm) - chess.square_file(to))
        dr = abs(chess.square_rank(frm) - chess.square_rank(to))
        assert df == 0 or dr == 0 or df == dr or {df, dr} == {1, 2}
    promos = POLICY_INDEX[1792:]
    assert len(promos) == 66 and promos[:6] == ("a7a8q", "a7a8r", "a7a8b", "a7b8q", "a7b8r", "a7b8b")
    assert MOVE_INDEX["e2e4"] == 322 and MOVE_INDEX["d2d4"] == 293  # known entries of lc0's table


def test_conv_map_is_a_bijection_and_follows_the_plane_layout():
    assert CONV_GATHER.shape == (1858,) and len(set(CONV_GATHER.tolist())) == 1858
    assert CONV_POLICY_MAP.shape == (5120,) and int((CONV_POLICY_MAP >= 0).sum()) == 1858
    assert torch.equal(CONV_POLICY_MAP[CONV_GATHER], torch.arange(1858))
    assert (CONV_POLICY_MAP.view(80, 64)[73:] == -1).all()  # 7 unused planes
    assert conv_flat_index("a1a2") == 0  # N, distance 1
    assert conv_flat_index("a1h8") == (7 + 6) * 64  # NE, distance 7
    assert conv_flat_index("b1c3") == 56 * 64 + 1  # first knight plane (+1 file, +2 ranks)
    assert conv_flat_index("b7a8r") == 64 * 64 + 49  # NW promotion to rook
    assert conv_flat_index("b7b8q") == 69 * 64 + 49  # N promotion to queen


def test_planes_match_reference_encoding():
    boards = all_test_boards()
    assert {b.turn for b in boards} == {chess.WHITE, chess.BLACK}
    batch = boards_to_planes(boards)
    assert batch.shape == (len(boards), 112, 8, 8) and batch.dtype == torch.float32
    for board, planes in zip(boards, batch):
        fen_before = board.fen()
        assert torch.equal(planes, expected_planes(board)), board.fen()
        assert torch.equal(board_to_planes(board), planes)
        assert board.fen() == fen_before  # the board is left as it was
    repeated = boards[-1]
    assert [int(batch[-1][13 * t + 12].sum()) for t in range(6)] == [64, 64, 0, 0, 0, 0]
    assert board_to_planes(chess.Board(SPECIAL_FENS[-1]))[109, 0, 0] == 99
    assert repeated.move_stack  # history planes of a 5-ply game: 6 positions, then zeros
    assert batch[-1][13 * 6 : 104].sum() == 0 and batch[-1][13 * 5 : 13 * 6].sum() > 0


def test_repetition_plane():
    board = chess.Board()
    for uci in ["g1f3", "g8f6", "f3g1", "f6g8"]:
        board.push_uci(uci)
    planes = board_to_planes(board)
    assert planes[12].sum() == 64 and planes[13 + 12].sum() == 0  # now repeats the start; one ply ago did not
    assert torch.equal(planes, expected_planes(board))


def test_black_view_is_mirrored():
    board = chess.Board()
    board.push_uci("e2e4")
    planes = board_to_planes(board)
    assert planes[0, 1].sum() == 8  # black's pawns seen from black: on its second rank
    assert planes[6, 4, 4] == 1 and planes[6, 3, 4] == 0  # white e4 pawn: rank index 3 mirrored to 4
    assert planes[108].sum() == 64


def test_move_indices_match_reference_on_many_positions():
    seen = {"castle": 0, "ep": 0, "promo": 0, "underpromo": 0, "black": 0}
    for board in all_test_boards():
        table = legal_move_indices(board)
        legal = list(board.legal_moves)
        assert len(table) == len(legal)  # no two legal moves share an index
        mask = legal_move_mask(board)
        assert mask.dtype == torch.bool and int(mask.sum()) == len(legal)
        for move in legal:
            idx = move_to_index(board, move)
            assert idx == expected_index(board, move), (board.fen(), move)
            assert mask[idx] and index_to_move(board, idx) == move
            seen["castle"] += board.is_castling(move)
            seen["ep"] += board.is_en_passant(move)
            seen["promo"] += bool(move.promotion)
            seen["underpromo"] += move.promotion == chess.KNIGHT
            seen["black"] += board.turn == chess.BLACK
    assert all(v > 0 for v in seen.values()), seen


def test_castling_and_promotion_spellings():
    board = chess.Board(SPECIAL_FENS[2])  # black to move
    assert POLICY_INDEX[move_to_index(board, chess.Move.from_uci("e8g8"))] == "e1h1"
    assert POLICY_INDEX[move_to_index(board, chess.Move.from_uci("e8c8"))] == "e1a1"
    board = chess.Board(SPECIAL_FENS[5])
    assert POLICY_INDEX[move_to_index(board, chess.Move.from_uci("a7b8n"))] == "a7b8"
    assert POLICY_INDEX[move_to_index(board, chess.Move.from_uci("c7c8q"))] == "c7c8q"
    board = chess.Board(SPECIAL_FENS[6])  # black promotes on the first rank: mirrored to the eighth
    assert POLICY_INDEX[move_to_index(board, chess.Move.from_uci("h2g1r"))] == "h7g8r"
    with pytest.raises(ValueError, match="not a legal move"):
        index_to_move(chess.Board(), MOVE_INDEX["e2e5"])


def test_unpack_planes_keeps_leading_dims():
    boards = random_boards(6, seed=3)
    words = torch.stack([board_to_planes(b) for b in boards]).reshape(2, 3, 112, 8, 8)
    packed = np.stack([board_to_bitplanes(b) for b in boards]).reshape(2, 3, 112)
    assert torch.equal(unpack_planes(packed), words)
