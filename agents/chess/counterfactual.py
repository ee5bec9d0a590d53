"""Counterfactual positions: validity-checked board edits, patching between a position and its edit, and a
"what changes the move" report over a set of positions.

Edits (frozen dataclasses, squares as names ``"e4"`` or indices a1 = 0):

- :class:`RemovePiece` ``(square)``: take a non-king piece off.
- :class:`MovePiece` ``(from_square, to_square)``: move a piece (kings too) to an empty square.
- :class:`AddPiece` ``(square, piece)``: put a piece (``"P"``, ``"n"``, ...: upper case white) on an empty
  square; not a king.
- :class:`PlaySibling` ``(move)``: undo the board's last move and play another legal move of the same
  position instead (UCI); the history stays.

:func:`apply_edit` returns a new board or raises :class:`InvalidEdit` naming what is wrong: no such square
or piece, an occupied or empty square, a pawn on the first or last rank, a missing king, the side not to
move left in check, and so on (python-chess's ``Board.status``). The side to move never changes; castling
rights that no longer fit the pieces and an en-passant square that no longer applies are dropped. A piece
edit drops the move stack (the edited position has no real history), so compare it with the original as a
bare position too (:func:`bare`).

:func:`patch_edits` patches each layer's activations from the original into the edited run with
``ActivationPatching`` and reads the original move's logit; :func:`what_changes_the_move` tries every
single removal (and every sibling of the last move, where there is history) on each position and records
which edits change the net's move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tensordict import TensorDict, TensorDictBase

from envs.chess.moves import legal_move_indices, legal_move_mask, move_to_index, require_chess
from envs.chess.planes import board_to_planes
from rlhook.latent import ActivationPatching

if TYPE_CHECKING:  # pragma: no cover
    import chess

    from agents.chess.net import LeelaNet

__all__ = [
    "InvalidEdit",
    "RemovePiece",
    "MovePiece",
    "AddPiece",
    "PlaySibling",
    "Edit",
    "apply_edit",
    "bare",
    "edits_td",
    "patch_edits",
    "EditEffect",
    "what_changes_the_move",
    "summarise_effects",
    "move_index",
    "square_masks",
]


class InvalidEdit(ValueError):
    """The edit cannot be made, or it gives a position that is not a legal chess position."""


@dataclass(frozen=True)
class RemovePiece:
    square: str | int


@dataclass(frozen=True)
class MovePiece:
    from_square: str | int
    to_square: str | int


@dataclass(frozen=True)
class AddPiece:
    square: str | int
    piece: str


@dataclass(frozen=True)
class PlaySibling:
    move: str


Edit = RemovePiece | MovePiece | AddPiece | PlaySibling

_STATUS = (  # python-chess status flag name -> what it means for an edited position
    ("STATUS_NO_WHITE_KING", "white has no king"),
    ("STATUS_NO_BLACK_KING", "black has no king"),
    ("STATUS_TOO_MANY_KINGS", "a side has more than one king"),
    ("STATUS_TOO_MANY_WHITE_PAWNS", "white has more than 8 pawns"),
    ("STATUS_TOO_MANY_BLACK_PAWNS", "black has more than 8 pawns"),
    ("STATUS_PAWNS_ON_BACKRANK", "a pawn stands on the first or last rank"),
    ("STATUS_TOO_MANY_WHITE_PIECES", "white has more than 16 pieces"),
    ("STATUS_TOO_MANY_BLACK_PIECES", "black has more than 16 pieces"),
    ("STATUS_OPPOSITE_CHECK", "the side not to move is in check (its king could be taken)"),
    ("STATUS_TOO_MANY_CHECKERS", "the side to move is checked by more pieces than any move can give"),
    ("STATUS_IMPOSSIBLE_CHECK", "the side to move is in a check no last move can have given"),
)


def _square(value: str | int, edit: Edit) -> int:
    chess = require_chess()
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 64:
        return value
    if isinstance(value, str) and value.lower() in chess.SQUARE_NAMES:
        return chess.parse_square(value.lower())
    raise InvalidEdit(f"{edit}: {value!r} is not a square; use a name a1..h8 or an index 0..63 (a1 = 0)")


def _check(board: chess.Board, edit: Edit, original: chess.Board) -> chess.Board:
    chess = require_chess()
    board.castling_rights = board.clean_castling_rights()
    if board.ep_square is not None and not board.has_legal_en_passant():
        board.ep_square = None
    status = board.status()
    problems = [text for flag, text in _STATUS if status & getattr(chess, flag)]
    if problems:
        raise InvalidEdit(f"{edit} on {original.fen()} gives an illegal position: {'; '.join(problems)}")
    return board


def bare(board: chess.Board) -> chess.Board:
    """The position of ``board`` without its move stack (a FEN), as piece edits return it."""
    return board.copy(stack=False)


def apply_edit(board: chess.Board, edit: Edit) -> chess.Board:
    """The edited position as a new board (see the module docstring); ``board`` is not changed."""
    chess = require_chess()
    if isinstance(edit, PlaySibling):
        if not board.move_stack:
            raise InvalidEdit(f"{edit}: the board has no last move to replace (a bare FEN has no history)")
        parent = board.copy()
        last = parent.pop()
        try:
            move = chess.Move.from_uci(edit.move)
        except (ValueError, TypeError) as err:
            raise InvalidEdit(f"{edit}: {edit.move!r} is not a UCI move such as 'e2e4'") from err
        if move == last:
            raise InvalidEdit(f"{edit}: {edit.move} is the move that was played; a sibling must differ")
        if move not in parent.legal_moves:
            raise InvalidEdit(
                f"{edit}: {edit.move} is not legal where the last move {last.uci()} was played ({parent.fen()})"
            )
        parent.push(move)
        return parent
    out = bare(board)
    if isinstance(edit, RemovePiece):
        sq = _square(edit.square, edit)
        piece = out.piece_at(sq)
        if piece is None:
            raise InvalidEdit(f"{edit}: {chess.square_name(sq)} is empty; there is nothing to remove")
        if piece.piece_type == chess.KING:
            raise InvalidEdit(f"{edit}: a king cannot be removed (both sides need one); move it instead")
        out.remove_piece_at(sq)
    elif isinstance(edit, MovePiece):
        src, dst = _square(edit.from_square, edit), _square(edit.to_square, edit)
        piece = out.piece_at(src)
        if piece is None:
            raise InvalidEdit(f"{edit}: {chess.square_name(src)} is empty; there is nothing to move")
        if out.piece_at(dst) is not None:
            raise InvalidEdit(
                f"{edit}: {chess.square_name(dst)} holds {out.piece_at(dst).symbol()}; remove it first or "
                "move onto an empty square"
            )
        out.remove_piece_at(src)
        out.set_piece_at(dst, piece)
    elif isinstance(edit, AddPiece):
        sq = _square(edit.square, edit)
        if not isinstance(edit.piece, str) or len(edit.piece) != 1 or edit.piece.lower() not in "pnbrq":
            raise InvalidEdit(
                f"{edit}: piece {edit.piece!r} must be one of P N B R Q (white) or p n b r q (black); "
                "kings cannot be added"
            )
        if out.piece_at(sq) is not None:
            raise InvalidEdit(f"{edit}: {chess.square_name(sq)} already holds {out.piece_at(sq).symbol()}")
        out.set_piece_at(sq, chess.Piece.from_symbol(edit.piece))
    else:
        raise InvalidEdit(
            f"unknown edit {edit!r}: use RemovePiece, MovePiece, AddPiece or PlaySibling from this module"
        )
    return _check(out, edit, board)


def edits_td(
    originals: Sequence[chess.Board], edited: Sequence[chess.Board], fill: str = "zeros"
) -> TensorDict:
    """``"board"`` = edited planes, ``("patched", "board")`` = original planes (the source of
    :func:`patch_edits`), ``"legal"`` / ``"legal_original"`` (N, 1858) masks; batch ``[N]``. Both boards of
    a pair must have the same side to move (every edit here keeps it)."""
    if len(originals) != len(edited) or not originals:
        raise ValueError(
            f"need as many edited boards as originals (and at least one), got {len(originals)} and {len(edited)}"
        )
    for i, (a, b) in enumerate(zip(originals, edited)):
        if a.turn != b.turn:
            raise ValueError(f"pair {i}: the edit changed the side to move; policy indices would not match")
    return TensorDict(
        {
            "board": torch.stack([board_to_planes(b, fill) for b in edited]),
            ("patched", "board"): torch.stack([board_to_planes(b, fill) for b in originals]),
            "legal": torch.stack([legal_move_mask(b) for b in edited]),
            "legal_original": torch.stack([legal_move_mask(b) for b in originals]),
        },
        batch_size=[len(originals)],
    )


class _MoveLogit:
    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        return out["policy"].gather(-1, out["move"].long()[..., None]).squeeze(-1)


def square_masks(boards: Sequence[chess.Board], squares: Sequence[str | int]) -> torch.Tensor:
    """``(N, 1, 8, 8)`` bool masks of one board square per board (name or a1 = 0), in each board's plane view
    (ranks flipped for black to move): the ``squares`` argument of :func:`patch_edits`."""
    chess = require_chess()
    mask = torch.zeros(len(boards), 1, 8, 8, dtype=torch.bool)
    for i, (board, sq) in enumerate(zip(boards, squares)):
        sq = chess.parse_square(sq) if isinstance(sq, str) else int(sq)
        rank, file = divmod(sq, 8)
        mask[i, 0, 7 - rank if board.turn == chess.BLACK else rank, file] = True
    return mask


def patch_edits(
    net: LeelaNet,
    td: TensorDictBase,
    paths: Sequence[str],
    moves: torch.Tensor,
    squares: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Patch each layer from the original (``("patched", "board")``) into the edited run (``"board"``) with
    ``ActivationPatching``; the target is the logit of ``moves`` (N,) (policy indices, e.g. the original's
    best move). ``squares`` (N, 1, 8, 8) bool (:func:`square_masks`) patches only those squares' channel
    vectors. Returns ``{"edited", "original"}``: the unpatched logits, and per layer the change and
    ``layer + "/restored"`` = change / (original - edited)."""
    x = td.select("board", ("patched", "board")).clone().set("move", torch.as_tensor(moves))
    patch_fn = None if squares is None else (lambda clean, source: torch.where(squares, source, clean))
    with ActivationPatching(list(paths), target=_MoveLogit(), patch_fn=patch_fn).prepare(net) as hooked:
        out = hooked(x.clone())
    with torch.no_grad():
        edited = _MoveLogit()(net(x.select("board", "move").clone()))
        original = _MoveLogit()(net(x.select("move").set("board", x["patched", "board"])))
    result = {"edited": edited, "original": original}
    for p in paths:
        result[p] = out["patch_effect", p].detach()
        result[p + "/restored"] = result[p] / (original - edited)
    return result


@dataclass
class EditEffect:
    """One tried edit of position ``position``: its ``edit``, the ``piece`` symbol it concerns (for removals),
    whether it is ``valid``, the original move's probability before and after (``p_before``, ``p_after``;
    0 if the move is illegal after the edit), whether the net's move ``changed`` and the new ``move`` (UCI,
    board coordinates) or the reason it was invalid."""

    position: int
    edit: Edit
    piece: str
    valid: bool
    p_before: float = 0.0
    p_after: float = 0.0
    changed: bool = False
    move: str = ""
    reason: str = ""


def _best(net: LeelaNet, boards: Sequence[chess.Board], fill: str) -> tuple[torch.Tensor, torch.Tensor]:
    planes = torch.stack([board_to_planes(b, fill) for b in boards])
    legal = torch.stack([legal_move_mask(b) for b in boards])
    with torch.no_grad():
        logits = net.heads(planes)["policy"].masked_fill(~legal, float("-inf"))
    probs = logits.softmax(-1)
    return probs.argmax(-1), probs


def what_changes_the_move(
    net: LeelaNet, boards: Sequence[chess.Board], *, siblings: bool = True, moves_per_piece: int = 0
) -> list[EditEffect]:
    """Try every single removal of a non-king piece (plus ``moves_per_piece`` one-square moves of each piece
    and, with ``siblings``, every other move in place of the last one) on each board and record the net's
    move on the edited position against the original's (bare positions for the piece edits, the real
    history for siblings). Invalid edits are kept with their reason."""
    chess = require_chess()
    fill = getattr(net, "history_fill", "zeros")
    effects: list[EditEffect] = []
    for i, board in enumerate(boards):
        candidates: list[tuple[Edit, str, chess.Board]] = []
        for sq, piece in bare(board).piece_map().items():
            if piece.piece_type != chess.KING:
                candidates.append((RemovePiece(chess.square_name(sq)), piece.symbol(), bare(board)))
            for dst in list(chess.SquareSet(chess.BB_KING_ATTACKS[sq]))[:moves_per_piece]:
                candidates.append(
                    (MovePiece(chess.square_name(sq), chess.square_name(dst)), piece.symbol(), bare(board))
                )
        if siblings and board.move_stack:
            parent = board.copy()
            last = parent.pop()
            for move in parent.legal_moves:
                if move != last:
                    candidates.append((PlaySibling(move.uci()), "", board))
        edited, kept = [], []
        for edit, symbol, reference in candidates:
            try:
                after = apply_edit(board, edit)
            except InvalidEdit as err:
                effects.append(EditEffect(i, edit, symbol, False, reason=str(err)))
                continue
            if not any(True for _ in after.legal_moves):
                effects.append(EditEffect(i, edit, symbol, False, reason="no legal move after the edit"))
                continue
            edited.append(after)
            kept.append((edit, symbol, reference))
        if not edited:
            continue
        references = [bare(board), board]
        ref_best, ref_probs = _best(net, references, fill)
        new_best, new_probs = _best(net, edited, fill)
        for k, (edit, symbol, reference) in enumerate(kept):
            r = 1 if reference is board and isinstance(edit, PlaySibling) else 0
            chosen = int(ref_best[r])
            move = legal_move_indices(references[r])[chosen]
            after = edited[k]
            legal_after = legal_move_indices(after)
            p_after = (
                float(new_probs[k, chosen]) if chosen in legal_after and legal_after[chosen] == move else 0.0
            )
            new_move = legal_after[int(new_best[k])]
            effects.append(
                EditEffect(
                    i,
                    edit,
                    symbol,
                    True,
                    p_before=float(ref_probs[r, chosen]),
                    p_after=p_after,
                    changed=new_move != move,
                    move=new_move.uci(),
                )
            )
    return effects


def summarise_effects(effects: Sequence[EditEffect], boards: Sequence[chess.Board]) -> dict[str, float]:
    """Shares over the valid edits: ``changed`` (any edit), per kind (``remove``, ``move``, ``sibling``), per
    removed piece (``remove_own_Q``, ``remove_their_p`` ... as ``own``/``their`` of the side to move), and
    ``positions_changed_by_a_removal`` (positions where some single removal changes the move)."""
    chess = require_chess()
    valid = [e for e in effects if e.valid]
    out: dict[str, float] = {"edits": float(len(effects)), "valid": float(len(valid))}
    if not valid:
        return out
    out["changed"] = sum(e.changed for e in valid) / len(valid)
    kinds = {"remove": RemovePiece, "move": MovePiece, "sibling": PlaySibling}
    for name, cls in kinds.items():
        rows = [e for e in valid if isinstance(e.edit, cls)]
        if rows:
            out[name] = sum(e.changed for e in rows) / len(rows)
            out[name + "_n"] = float(len(rows))
    groups: dict[str, list[bool]] = {}
    for e in valid:
        if isinstance(e.edit, RemovePiece):
            own = chess.Piece.from_symbol(e.piece).color == boards[e.position].turn
            groups.setdefault(f"remove_{'own' if own else 'their'}_{e.piece.upper()}", []).append(e.changed)
    out.update({k: sum(v) / len(v) for k, v in sorted(groups.items())})
    hit = {e.position for e in valid if isinstance(e.edit, RemovePiece) and e.changed}
    out["positions_changed_by_a_removal"] = len(hit) / len(boards)
    return out


def move_index(board: chess.Board, uci: str) -> int:
    """Policy index of the UCI move ``uci`` on ``board`` (for :func:`patch_edits` targets)."""
    chess = require_chess()
    return move_to_index(board, chess.Move.from_uci(uci))
