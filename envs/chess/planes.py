"""Board -> lc0's classical 112-plane input (``INPUT_CLASSICAL_112_PLANE``), written from the format's rule.

Planes, each 8x8 indexed ``[rank, file]`` from the side to move's view (ranks flipped when black moves):

- ``13 * t + k`` for history step ``t = 0..7`` (0 = now, 1 = one ply ago, ...): ``k = 0..5`` our pawn,
  knight, bishop, rook, queen, king; ``k = 6..11`` theirs; ``k = 12`` ones if that position occurred
  before in the game. "Our" is always the side to move *now*. Steps older than the game's start are zeros.
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
]

NUM_PLANES = 112
HISTORY = 8
PLANES_PER_STEP = 13
AUX = HISTORY * PLANES_PER_STEP  # 104
RULE50_PLANE = 109
_ALL = (1 << 64) - 1


def _flip(bb: int) -> int:
    """Mirror a bitboard vertically (rank r -> 7 - r)."""
    return int.from_bytes(bb.to_bytes(8, "little"), "big")


def board_to_bitplanes(board: chess.Board) -> np.ndarray:
    """Pack ``board`` (its move stack is the history) into ``(112,)`` uint64 words; see the module docstring.

    The board is walked back and replayed in place, so it is unchanged afterwards (not thread-safe).
    """
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
            if not board.move_stack or t == HISTORY - 1:
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


def board_to_planes(board: chess.Board) -> torch.Tensor:
    """``(112, 8, 8)`` float32 planes of ``board``; history comes from its move stack."""
    return unpack_planes(board_to_bitplanes(board))


def boards_to_planes(boards: Sequence[chess.Board]) -> torch.Tensor:
    """``(N, 112, 8, 8)`` float32 planes of several boards."""
    if len(boards) == 0:
        return torch.zeros(0, NUM_PLANES, 8, 8)
    return unpack_planes(np.stack([board_to_bitplanes(b) for b in boards]))
