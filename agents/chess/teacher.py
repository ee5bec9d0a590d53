"""Positions labelled exactly by code: a one-ply teacher move, a WDL class and a few chess concepts.

Teacher move, by priority (ties go to the lowest lc0 policy index):

1. a move that mates at once;
2. the capture with the largest positive *gain* (below);
3. a checking move whose gain is not negative;
4. the non-losing move (gain 0) that advances furthest towards the opponent; if every move loses
   material, the one that loses least.

*gain* of a move = value of the piece it takes (+ promotion value - 1) minus the mover's loss if, after the
move, the destination is attacked by the opponent: the mover's full value if we do not defend that square,
else ``max(0, mover - cheapest attacker)``. Piece values P 1, N 3, B 3, R 5, Q 9.

WDL class for the side to move (0 win, 1 draw, 2 loss): a win if it can mate at once; otherwise
``score = material balance + max(0, best gain) - 4 * (the opponent threatens mate at once)``, a win if
``score >= 2``, a loss if ``score <= -2``, else a draw.

python-chess is imported lazily (optional extra ``chess``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from envs.chess.moves import move_to_index, require_chess

if TYPE_CHECKING:  # pragma: no cover
    import chess

__all__ = [
    "PIECE_VALUES",
    "WIN",
    "DRAW",
    "LOSS",
    "PositionLabels",
    "move_gain",
    "mating_moves",
    "material_balance",
    "hanging_value",
    "label_position",
    "teacher_move",
]

PIECE_VALUES = {1: 1, 2: 3, 3: 3, 4: 5, 5: 9, 6: 0}  # python-chess piece types P N B R Q K
WIN, DRAW, LOSS = 0, 1, 2
MATE_THREAT_PENALTY = 4
WDL_MARGIN = 2


@dataclass
class PositionLabels:
    """Exact labels of one position, all from the side to move's view."""

    move: chess.Move  # the teacher's move
    move_index: int  # its lc0 policy index
    rule: str  # which teacher rule chose it: "mate", "capture", "check" or "quiet"
    wdl: int  # 0 win, 1 draw, 2 loss
    material: int  # our material minus theirs (P1 N3 B3 R5 Q9)
    best_gain: int  # largest move gain available (may be negative)
    mate_in_one: bool  # we can mate at once
    mate_threat: bool  # they could mate at once if it were their move (False when we are in check)
    in_check: bool
    mobility: int  # number of legal moves
    their_hanging: int  # value of their most valuable piece we attack and they do not defend
    own_hanging: int  # value of our most valuable piece they attack and we do not defend


def material_balance(board: chess.Board) -> int:
    """Material of the side to move minus the opponent's."""
    us = board.turn
    total = 0
    for piece, value in PIECE_VALUES.items():
        total += value * (len(board.pieces(piece, us)) - len(board.pieces(piece, not us)))
    return total


def hanging_value(board: chess.Board, color: bool) -> int:
    """Value of ``color``'s most valuable piece attacked by the other side and not defended by ``color``."""
    best = 0
    for square, piece in board.piece_map().items():
        if piece.color != color or piece.piece_type == 6:
            continue
        value = PIECE_VALUES[piece.piece_type]
        if (
            value > best
            and board.is_attacked_by(not color, square)
            and not board.is_attacked_by(color, square)
        ):
            best = value
    return best


def move_gain(board: chess.Board, move: chess.Move) -> int:
    """Material the side to move wins (+) or loses (-) with ``move`` under the one-exchange rule above."""
    chess = require_chess()
    us = board.turn
    mover = board.piece_type_at(move.from_square)
    src, dst = chess.BB_SQUARES[move.from_square], chess.BB_SQUARES[move.to_square]
    occupied = (board.occupied & ~src) | dst
    gain = 0
    if board.is_en_passant(move):
        gain = 1
        occupied &= ~chess.BB_SQUARES[move.to_square - 8 if us else move.to_square + 8]
    elif board.occupied_co[not us] & dst:
        gain = PIECE_VALUES[board.piece_type_at(move.to_square)]
    if move.promotion:
        gain += PIECE_VALUES[move.promotion] - 1
        mover = move.promotion
    if mover == chess.KING:
        return gain
    attackers = board.attackers_mask(not us, move.to_square, occupied) & occupied & ~dst
    if attackers:
        value = PIECE_VALUES[mover]
        if board.attackers_mask(us, move.to_square, occupied) & occupied & ~src:
            cheapest = min(PIECE_VALUES[board.piece_type_at(s)] or 100 for s in chess.scan_forward(attackers))
            value = max(0, value - cheapest)
        gain -= value
    return gain


def _may_check(board: chess.Board, move: chess.Move) -> bool:
    """Cheap test, never False for a move that gives check (it may be True for one that does not)."""
    chess = require_chess()
    us = board.turn
    king = board.king(not us)
    if king is None or move.promotion or board.is_castling(move) or board.is_en_passant(move):
        return True
    src = move.from_square
    line = chess.BB_RAYS[king][src]
    if line:  # discovered check: one of our sliders on the line through the king and the from-square
        straight = chess.square_rank(king) == chess.square_rank(src) or chess.square_file(
            king
        ) == chess.square_file(src)
        sliders = (board.rooks if straight else board.bishops) | board.queens
        if line & sliders & board.occupied_co[us] & ~chess.BB_SQUARES[src]:
            return True
    piece = board.piece_type_at(src)
    occupied = board.occupied & ~chess.BB_SQUARES[src]
    diag = chess.BB_DIAG_ATTACKS[king][chess.BB_DIAG_MASKS[king] & occupied]
    straight_reach = (
        chess.BB_RANK_ATTACKS[king][chess.BB_RANK_MASKS[king] & occupied]
        | chess.BB_FILE_ATTACKS[king][chess.BB_FILE_MASKS[king] & occupied]
    )
    reach = {
        chess.PAWN: chess.BB_PAWN_ATTACKS[not us][king],
        chess.KNIGHT: chess.BB_KNIGHT_ATTACKS[king],
        chess.BISHOP: diag,
        chess.ROOK: straight_reach,
        chess.QUEEN: diag | straight_reach,
        chess.KING: 0,
    }[piece]
    return bool(reach & chess.BB_SQUARES[move.to_square])


def mating_moves(board: chess.Board) -> list[chess.Move]:
    """Legal moves of the side to move that checkmate at once."""
    mates = []
    for move in board.legal_moves:
        if not _may_check(board, move):
            continue
        board.push(move)
        if board.is_check() and board.is_checkmate():
            mates.append(move)
        board.pop()
    return mates


def _threatens_mate(board: chess.Board) -> bool:
    chess = require_chess()
    if board.is_check():
        return False
    board.push(chess.Move.null())
    try:
        return bool(mating_moves(board))
    finally:
        board.pop()


def label_position(board: chess.Board) -> PositionLabels:
    """Teacher move, WDL class and concepts of a position with at least one legal move."""
    moves = sorted(board.legal_moves, key=lambda m: move_to_index(board, m))
    if not moves:
        raise ValueError(f"no legal move in {board.fen()}")
    mates = mating_moves(board)
    gains = [move_gain(board, m) for m in moves]
    best_gain = max(gains)
    if mates:
        move, rule = min(mates, key=lambda m: move_to_index(board, m)), "mate"
    elif best_gain > 0:
        move, rule = moves[gains.index(best_gain)], "capture"
    else:
        checks = [m for m, g in zip(moves, gains) if g >= 0 and _may_check(board, m) and board.gives_check(m)]
        if checks:
            move, rule = checks[0], "check"
        else:
            sign = 1 if board.turn else -1
            pool = [
                (g, sign * (m.to_square // 8 - m.from_square // 8), -i)
                for i, (m, g) in enumerate(zip(moves, gains))
            ]
            move, rule = moves[-max(pool)[2]], "quiet"
    material = material_balance(board)
    threat = _threatens_mate(board)
    if mates:
        wdl = WIN
    else:
        score = material + max(0, best_gain) - MATE_THREAT_PENALTY * threat
        wdl = WIN if score >= WDL_MARGIN else LOSS if score <= -WDL_MARGIN else DRAW
    return PositionLabels(
        move=move,
        move_index=move_to_index(board, move),
        rule=rule,
        wdl=wdl,
        material=material,
        best_gain=best_gain,
        mate_in_one=bool(mates),
        mate_threat=threat,
        in_check=board.is_check(),
        mobility=len(moves),
        their_hanging=hanging_value(board, not board.turn),
        own_hanging=hanging_value(board, board.turn),
    )


def teacher_move(board: chess.Board) -> chess.Move:
    """The teacher's move in ``board`` (see the module docstring)."""
    return label_position(board).move
