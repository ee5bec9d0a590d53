"""lc0's 1858-move policy index and its 80x8x8 convolution-head map, generated from their rule.

The index lists every from->to pair that a queen line or a knight jump can reach, from-squares in order
a1, b1, ..., h8 (square = 8 * rank + file) and, for each, destinations sorted by square; then the 66
promotions from the seventh rank (left, straight, right capture; suffixes ``q``, ``r``, ``b``). Moves are
seen from the side to move: black's moves are mirrored vertically first. Castling is the king moving onto
its own rook (``e1h1``, ``e1a1``) and a knight under-promotion uses the plain move (``e7e8``).

The conv policy head emits 80 planes of 8x8: 56 queen-move planes (direction N, NE, E, SE, S, SW, W, NW
times distance 1..7), 8 knight planes, 9 promotion planes (direction NW, N, NE times piece r, b, q) and 7
unused planes; a move's flat position is ``plane * 64 + from_square``. :data:`CONV_GATHER` picks the 1858
logits out of the flattened ``(N, 5120)`` head output.

Everything above is chess-library free. The helpers that take a ``chess.Board`` import python-chess
(optional extra ``chess``) lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    import chess

__all__ = [
    "POLICY_SIZE",
    "CONV_PLANES",
    "POLICY_INDEX",
    "MOVE_INDEX",
    "CONV_GATHER",
    "CONV_POLICY_MAP",
    "square_name",
    "mirror_uci",
    "conv_flat_index",
    "move_to_index",
    "index_to_move",
    "legal_move_indices",
    "legal_move_mask",
    "require_chess",
]

POLICY_SIZE = 1858
CONV_PLANES = 80
FILES = "abcdefgh"

# (file, rank) steps; the order fixes the conv planes.
QUEEN_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
KNIGHT_JUMPS = ((1, 2), (2, 1), (2, -1), (1, -2), (-1, -2), (-2, -1), (-2, 1), (-1, 2))
PROMOTION_FILE_STEPS = (-1, 0, 1)  # NW, N, NE as seen by the side to move
PROMOTION_PIECES_INDEX = "qrb"  # suffix order inside the 1858 index
PROMOTION_PIECES_CONV = "rbq"  # piece order inside the conv promotion planes


def square_name(square: int) -> str:
    """``0 -> "a1"``, ``63 -> "h8"``."""
    return FILES[square % 8] + str(square // 8 + 1)


def _square(name: str) -> int:
    return FILES.index(name[0]) + 8 * (int(name[1]) - 1)


def mirror_uci(uci: str) -> str:
    """Flip a UCI move vertically (rank r -> 9 - r), keeping any promotion suffix."""
    return uci[0] + str(9 - int(uci[1])) + uci[2] + str(9 - int(uci[3])) + uci[4:]


def _on_board(file: int, rank: int) -> bool:
    return 0 <= file < 8 and 0 <= rank < 8


def _generate_index() -> tuple[str, ...]:
    moves = []
    for sq in range(64):
        f, r = sq % 8, sq // 8
        targets = set()
        for df, dr in QUEEN_DIRECTIONS:
            for dist in range(1, 8):
                if _on_board(f + df * dist, r + dr * dist):
                    targets.add(f + df * dist + 8 * (r + dr * dist))
        for df, dr in KNIGHT_JUMPS:
            if _on_board(f + df, r + dr):
                targets.add(f + df + 8 * (r + dr))
        moves += [square_name(sq) + square_name(t) for t in sorted(targets)]
    for f in range(8):
        for df in PROMOTION_FILE_STEPS:
            if 0 <= f + df < 8:
                moves += [FILES[f] + "7" + FILES[f + df] + "8" + p for p in PROMOTION_PIECES_INDEX]
    return tuple(moves)


POLICY_INDEX: tuple[str, ...] = _generate_index()
MOVE_INDEX: dict[str, int] = {m: i for i, m in enumerate(POLICY_INDEX)}


def conv_flat_index(uci: str) -> int:
    """Flat position ``plane * 64 + from_square`` of a (side-to-move view) UCI move in the 80x8x8 head."""
    src, dst = _square(uci[:2]), _square(uci[2:4])
    df, dr = dst % 8 - src % 8, dst // 8 - src // 8
    if len(uci) == 5:
        plane = 64 + 3 * PROMOTION_FILE_STEPS.index(df) + PROMOTION_PIECES_CONV.index(uci[4])
    elif (df, dr) in KNIGHT_JUMPS:
        plane = 56 + KNIGHT_JUMPS.index((df, dr))
    else:
        dist = max(abs(df), abs(dr))
        direction = QUEEN_DIRECTIONS.index((df // dist, dr // dist))
        plane = 7 * direction + dist - 1
    return plane * 64 + src


#: ``(1858,)`` int64: flat index into the ``(N, 80 * 64)`` conv-head output for each policy entry.
CONV_GATHER: torch.Tensor = torch.tensor([conv_flat_index(m) for m in POLICY_INDEX], dtype=torch.long)
#: ``(5120,)`` int64: the inverse map, policy index for each conv-head position, -1 where unused.
CONV_POLICY_MAP: torch.Tensor = torch.full((CONV_PLANES * 64,), -1, dtype=torch.long).index_put_(
    (CONV_GATHER,), torch.arange(POLICY_SIZE)
)


_CHESS = None


def require_chess():
    """Import python-chess (once), or explain which extra installs it."""
    global _CHESS
    if _CHESS is None:
        try:
            import chess
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "this needs python-chess (GPL-3.0), an optional extra: pip install 'rlhook[chess]'"
            ) from err
        _CHESS = chess
    return _CHESS


def _nn_uci(board: chess.Board, move: chess.Move) -> str:
    """The index spelling of ``move``: side-to-move view, castling king->rook, knight promotion plain."""
    chess = require_chess()
    to_sq = move.to_square
    if board.is_castling(move) and not board.chess960:  # python-chess spells standard castling e1g1
        rook_file = 7 if board.is_kingside_castling(move) else 0
        to_sq = chess.square(rook_file, chess.square_rank(move.from_square))
    uci = square_name(move.from_square) + square_name(to_sq)
    if move.promotion and move.promotion != chess.KNIGHT:
        uci += chess.piece_symbol(move.promotion)
    return uci if board.turn == chess.WHITE else mirror_uci(uci)


def move_to_index(board: chess.Board, move: chess.Move) -> int:
    """Policy index (0..1857) of a legal ``move`` in ``board``."""
    return MOVE_INDEX[_nn_uci(board, move)]


def legal_move_indices(board: chess.Board) -> dict[int, chess.Move]:
    """``{policy index: move}`` for every legal move of ``board``.

    Convention: the legal moves are those of the rules of movement alone, as lc0's move generator gives them
    (checked against lc0 v0.32.1). Positions python-chess calls game over while moves remain (insufficient
    material, the 75-move rule, fivefold repetition) keep their moves: whether a game has ended is decided
    by whoever plays it (TorchRL's ``ChessEnv``, :func:`agents.chess.search.terminal_value`), not by the mask.
    Only checkmate and stalemate give an empty table."""
    return {move_to_index(board, m): m for m in board.legal_moves}


def index_to_move(board: chess.Board, index: int) -> chess.Move:
    """The legal move of ``board`` with policy index ``index``; ``ValueError`` if none is."""
    move = legal_move_indices(board).get(int(index))
    if move is None:
        raise ValueError(f"policy index {index} ({POLICY_INDEX[index]}) is not a legal move in {board.fen()}")
    return move


def legal_move_mask(board: chess.Board) -> torch.Tensor:
    """``(1858,)`` bool mask of the legal moves of ``board`` (same convention as :func:`legal_move_indices`)."""
    mask = torch.zeros(POLICY_SIZE, dtype=torch.bool)
    mask[list(legal_move_indices(board))] = True
    return mask
