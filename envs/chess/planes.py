"""Board -> lc0's classical 112-plane input (``INPUT_CLASSICAL_112_PLANE``), written from the format's rule.

Planes, each 8x8 indexed ``[rank, file]`` from the side to move's view (ranks flipped when black moves):

- ``13 * t + k`` for history step ``t = 0..7`` (0 = now, 1 = one ply ago, ...): ``k = 0..5`` our pawn,
  knight, bishop, rook, queen, king; ``k = 6..11`` theirs; ``k = 12`` ones if that position occurred
  before in the game. "Our" is always the side to move *now*. Steps older than the known history (the
  board's root: a FEN or the start position) are filled as ``fill`` says, with lc0's three modes
  (``FillEmptyHistory`` of lc0 v0.32.1, checked against its encoder):

  - ``"zeros"`` (lc0's ``NO``; the default, and what the nets trained here saw): the older steps are zeros.
  - ``"fen_only"`` (lc0's engine default, use it for nets loaded from lc0 files): the root position is
    repeated into every older step, with the pawn of an en-passant double push (the root's en-passant
    square, as given in its FEN) put back on its start square; repetition planes of those steps are zero.
    No fill (zeros) when the root is the standard start position (same pieces, all four castling rights,
    white to move; the move counters do not matter).
  - ``"always"`` (lc0's ``ALWAYS``): as ``"fen_only"``, the start position included.
- 104/105: ones if we may castle queenside/kingside; 106/107: the same for them.
- 108: ones if black is to move. 109: the rule-50 half-move counter, raw (0..100). 110: zeros. 111: ones.

Positions are first packed as 112 ``uint64`` words, one bitboard per plane (square = 8 * rank + file), with
plane 109 holding the counter itself: compact enough to store hundreds of thousands of positions, and
:func:`unpack_planes` turns any batch of them into float planes. Only the functions taking a
``chess.Board`` need python-chess (imported lazily).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from envs.chess.moves import require_chess

if TYPE_CHECKING:  # pragma: no cover
    import chess

__all__ = [
    "NUM_PLANES",
    "HISTORY",
    "PLANES_PER_STEP",
    "RULE50_PLANE",
    "board_to_bitplanes",
    "unpack_planes",
    "board_to_planes",
    "boards_to_planes",
    "HISTORY_FILLS",
    "LC0_HISTORY_FILL",
]

#: lc0's history fill modes (``NO``, ``FEN_ONLY``, ``ALWAYS``), spelled as :func:`board_to_bitplanes` takes them
HISTORY_FILLS = ("zeros", "fen_only", "always")
#: what the lc0 engine (v0.32.1) uses for a position given as a FEN: the fill for nets loaded from lc0 files
LC0_HISTORY_FILL = "fen_only"

NUM_PLANES = 112
HISTORY = 8
PLANES_PER_STEP = 13
AUX = HISTORY * PLANES_PER_STEP  # 104
RULE50_PLANE = 109
_ALL = (1 << 64) - 1


def _flip(bb: int) -> int:
    """Mirror a bitboard vertically (rank r -> 7 - r)."""
    return int.from_bytes(bb.to_bytes(8, "little"), "big")


def _check_fill(fill: str) -> None:
    if fill not in HISTORY_FILLS:
        raise ValueError(
            f"unknown history fill {fill!r}; choose one of {HISTORY_FILLS} ('zeros' for the nets trained "
            f"here, {LC0_HISTORY_FILL!r} for lc0 nets, as the lc0 engine fills a bare FEN)"
        )


def _is_start_position(board: chess.Board) -> bool:
    chess = require_chess()
    start = chess.Board()
    return (
        board.board_fen() == start.board_fen()
        and board.turn == chess.WHITE
        and board.castling_rights == start.castling_rights
    )


def _undo_double_push(pieces: list[int], board: chess.Board, us: bool, flip) -> list[int]:
    """The 12 piece words of a step with the pawn of the double push that made ``board.ep_square`` back on
    its start square (lc0 does this on filled history steps)."""
    ep = board.ep_square
    if ep is None:
        return pieces
    pusher = not board.turn
    step = 8 if pusher else -8  # a white pawn stands one rank above the en-passant square, black's below
    k = 0 if pusher == us else 6  # our pawns are word 0, theirs word 6
    out = list(pieces)
    out[k] = (out[k] & ~flip(1 << (ep + step))) | flip(1 << (ep - step))
    return out


def board_to_bitplanes(board: chess.Board, fill: str = "zeros") -> np.ndarray:
    """Pack ``board`` (its move stack is the history) into ``(112,)`` uint64 words; see the module docstring.

    ``fill`` says what the history steps older than the board's root hold (:data:`HISTORY_FILLS`). The board
    is walked back and replayed in place, so it is unchanged afterwards (not thread-safe).
    """
    _check_fill(fill)
    chess = require_chess()
    us = board.turn
    them = not us
    flip = _flip if us == chess.BLACK else (lambda bb: bb)
    words = [0] * NUM_PLANES
    popped = []  # walk back through the history in place, then replay it
    try:
        for t in range(HISTORY):
            base = PLANES_PER_STEP * t
            for k, piece in enumerate(chess.PIECE_TYPES):
                words[base + k] = flip(board.pieces_mask(piece, us))
                words[base + 6 + k] = flip(board.pieces_mask(piece, them))
            if board.is_repetition(2):
                words[base + 12] = _ALL
            if t == HISTORY - 1:
                break
            if not board.move_stack:  # the root: fill the older steps
                if fill == "zeros" or (fill == "fen_only" and _is_start_position(board)):
                    break
                root = _undo_double_push(words[base : base + 12], board, us, flip)
                for older in range(t + 1, HISTORY):
                    words[PLANES_PER_STEP * older : PLANES_PER_STEP * older + 12] = root
                break
            popped.append(board.pop())
    finally:
        for move in reversed(popped):
            board.push(move)
    words[AUX + 0] = _ALL if board.has_queenside_castling_rights(us) else 0
    words[AUX + 1] = _ALL if board.has_kingside_castling_rights(us) else 0
    words[AUX + 2] = _ALL if board.has_queenside_castling_rights(them) else 0
    words[AUX + 3] = _ALL if board.has_kingside_castling_rights(them) else 0
    words[AUX + 4] = _ALL if us == chess.BLACK else 0
    words[RULE50_PLANE] = board.halfmove_clock
    words[AUX + 7] = _ALL
    return np.array(words, dtype=np.uint64)


def unpack_planes(words: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(..., 112)`` uint64 words -> ``(..., 112, 8, 8)`` float32 planes."""
    words = np.ascontiguousarray(np.asarray(words, dtype=np.uint64))
    lead = words.shape[:-1]
    bits = np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")
    planes = torch.from_numpy(bits.reshape(*lead, NUM_PLANES, 8, 8).astype(np.float32))
    planes[..., RULE50_PLANE, :, :] = torch.from_numpy(words[..., RULE50_PLANE].astype(np.float32))[
        ..., None, None
    ]
    return planes


def board_to_planes(board: chess.Board, fill: str = "zeros") -> torch.Tensor:
    """``(112, 8, 8)`` float32 planes of ``board``; history comes from its move stack, then ``fill``."""
    return unpack_planes(board_to_bitplanes(board, fill))


def boards_to_planes(boards: Sequence[chess.Board], fill: str = "zeros") -> torch.Tensor:
    """``(N, 112, 8, 8)`` float32 planes of several boards."""
    _check_fill(fill)
    if len(boards) == 0:
        return torch.zeros(0, NUM_PLANES, 8, 8)
    return unpack_planes(np.stack([board_to_bitplanes(b, fill) for b in boards]))
