"""Attribute a PUCT search's choice back to the board, and compare the raw net with the search.

The search's move ``a`` has the value ``q[a] = mean over the simulations through a of (-1) ** depth * v(leaf)``
(:mod:`agents.chess.search`). Each leaf value ``v`` is the net's ``P(W) - P(L)`` on the leaf's planes, so
integrated gradients (rlhook's ``IntegratedGradients``, baseline: piece planes zeroed) of every visited leaf,
weighted by ``(-1) ** depth / n(a)``, decompose ``q[a]`` (minus the same mean at the baselines) over the
leaves' squares. :func:`track_pieces` follows every root piece along the simulation's moves, so a leaf square
holding a piece that stood on root square ``r`` credits ``r``; other squares credit themselves. The result is
one ``(8, 8)`` map per root in white's view whose sum is the decomposed value. The prior term is the
attribution of the root's logit of ``a``. Terminal leaves (a constant value) get no attribution.

:func:`compare_net_and_search` gives agreement figures over a batch, :func:`probe_disagreement` the concept
probes' scores on the positions where the net and the search disagree versus those where they agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tensordict import TensorDict, TensorDictBase

from agents.chess.search import net_value, search_paths
from envs.chess.moves import require_chess
from envs.chess.planes import board_to_planes
from rlhook.attribution import IntegratedGradients

if TYPE_CHECKING:  # pragma: no cover
    import chess

    from agents.chess.interpret import ProbeResult
    from agents.chess.net import LeelaNet

__all__ = ["track_pieces", "attribute_search", "compare_net_and_search", "probe_disagreement"]

PIECE_PLANES = 104


def track_pieces(board: chess.Board, moves: Sequence[chess.Move]) -> dict[int, int]:
    """``{square after the moves: root square}`` for every piece of ``board`` that survives ``moves``
    (castling moves king and rook, en passant removes the pawn behind, a promoted pawn keeps its origin)."""
    chess = require_chess()
    where = {sq: sq for sq in board.piece_map()}
    b = board.copy(stack=False)
    for move in moves:
        if move not in b.legal_moves:
            raise ValueError(f"move {move.uci()} is not legal in {b.fen()}")
        if b.is_castling(move):
            rank = chess.square_rank(move.from_square)
            kingside = b.is_kingside_castling(move)
            rook_from = chess.square(7 if kingside else 0, rank)
            rook_to = chess.square(5 if kingside else 3, rank)
            king_to = chess.square(6 if kingside else 2, rank)
            king, rook = where.pop(move.from_square, None), where.pop(rook_from, None)
            if king is not None:
                where[king_to] = king
            if rook is not None:
                where[rook_to] = rook
        else:
            if b.is_en_passant(move):
                where.pop(move.to_square + (-8 if b.turn else 8), None)
            where.pop(move.to_square, None)  # a captured piece leaves the board
            origin = where.pop(move.from_square, None)
            if origin is not None:
                where[move.to_square] = origin
        b.push(move)
    return where


class _LeafValue:
    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        return net_value(out["wdl"])


class _MoveLogit:
    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        return out["policy"].gather(-1, out["move"].long()[..., None]).squeeze(-1)


def _ig(
    net: LeelaNet, planes: torch.Tensor, target, extra: dict, n_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    base = planes.clone()
    base[:, :PIECE_PLANES] = 0
    td = TensorDict({"board": planes, ("baseline", "board"): base, **extra}, batch_size=[len(planes)])
    with IntegratedGradients(target, inputs=["board"], n_steps=n_steps, chunk_size=256).prepare(
        net
    ) as hooked:
        out = hooked(td)
    return out["attr", "board"].detach(), out["attr_delta"].detach()


def _white_view(square_map: torch.Tensor, black: bool) -> torch.Tensor:
    """A plane-view (8, 8) map -> board squares a1..h8 as a (64,) vector."""
    return (square_map.flip(0) if black else square_map).reshape(64)


def attribute_search(
    net: LeelaNet, boards: Sequence[chess.Board], record: TensorDictBase, *, n_steps: int = 16
) -> TensorDict:
    """Maps of the search's choice on each root board, batch ``[B]``, all ``(B, 8, 8)`` in white's view
    ``[rank, file]`` (a1 at ``[0, 0]``), under ``"search_attr"``:

    - ``value``: the leaves' integrated gradients of their value, weighted ``(-1) ** depth / n(a)`` and moved
      back to the root squares of the pieces (see the module docstring); ``value.sum() == explained``.
    - ``prior``: integrated gradients of the root's logit of the chosen move.
    - ``explained`` (B,): ``q[a]`` minus the same mean over the leaves' baselines, up to IG's quadrature error
      ``delta`` (B,); ``leaves`` (B,): the non-terminal leaves attributed.
    """
    chess = require_chess()
    sr = record["search"]
    B = len(boards)
    if sr.batch_size != (B,):
        raise ValueError(
            f"record holds {tuple(sr.batch_size)} roots but {B} boards were given; pass the searched boards"
        )
    out = {k: torch.zeros(B, 8, 8) for k in ("value", "prior")}
    explained, delta, leaves = torch.zeros(B), torch.zeros(B), torch.zeros(B, dtype=torch.long)
    fill = getattr(net, "history_fill", "zeros")
    roots = torch.stack([board_to_planes(b, fill) for b in boards])
    attr, _ = _ig(net, roots, _MoveLogit(), {"move": sr["move"]}, n_steps)
    for i, b in enumerate(boards):
        out["prior"][i] = _white_view(attr[i].sum(0), b.turn == chess.BLACK).reshape(8, 8)
        chosen = int(sr["move"][i])
        sim = sr["sim"][i]
        rows = torch.nonzero((sim["first"] == chosen) & ~sim["terminal"]).flatten()
        n = int((sim["first"] == chosen).sum())
        if len(rows) == 0:
            continue
        planes = sim["leaf"][rows].float()
        a, d = _ig(net, planes, _LeafValue(), {}, n_steps)
        paths = search_paths(b, record, i)
        total = torch.zeros(64)
        for k, s in enumerate(rows.tolist()):
            weight = (-1.0) ** int(sim["depth"][s]) / n
            leaf_board = b.copy()
            for move in paths[s]:
                leaf_board.push(move)
            per_square = _white_view(a[k].sum(0), leaf_board.turn == chess.BLACK) * weight
            origin = track_pieces(b, paths[s])
            for sq in range(64):
                total[origin.get(sq, sq)] += per_square[sq]
            explained[i] += weight * (a[k].sum() - d[k])
            delta[i] += weight * d[k]
        out["value"][i] = total.reshape(8, 8)
        leaves[i] = len(rows)
    return TensorDict(
        {"search_attr": {**out, "explained": explained, "delta": delta, "leaves": leaves}}, batch_size=[B]
    )


def compare_net_and_search(record: TensorDictBase, teacher: torch.Tensor | None = None) -> dict[str, float]:
    """Agreement of the raw net's move and the search's over a batch: ``agree`` (share of equal moves),
    ``n``, and with ``teacher`` (B,) policy indices, ``net_teacher`` / ``search_teacher`` top-1 agreement."""
    sr = record["search"]
    same = sr["move"] == sr["net_move"]
    result = {"n": float(len(same)), "agree": float(same.float().mean())}
    if teacher is not None:
        teacher = torch.as_tensor(teacher)
        if teacher.shape != same.shape:
            raise ValueError(
                f"teacher must hold one policy index per root {tuple(same.shape)}, got {tuple(teacher.shape)}"
            )
        result["net_teacher"] = float((sr["net_move"] == teacher).float().mean())
        result["search_teacher"] = float((sr["move"] == teacher).float().mean())
    return result


def probe_disagreement(
    activations: dict[str, dict[str, torch.Tensor]],
    labels: dict[str, torch.Tensor],
    n_train: int,
    disagree: torch.Tensor,
    concepts: Sequence[str],
) -> dict[str, dict]:
    """Probes fitted on the first ``n_train`` rows (:func:`agents.chess.interpret.probe_concepts`), scored on
    the remaining rows where the net and the search disagree (``disagree`` (N - n_train,) bool) and where they
    agree. Returns ``{concept: {"agree": {model: {layer: score}}, "disagree": {...}, "rate_agree": float,
    "rate_disagree": float}}`` (``rate``: mean label, the concept's frequency or mean value)."""
    from agents.chess.interpret import probe_concepts

    n_total = next(iter(labels.values())).shape[0]
    disagree = torch.as_tensor(disagree, dtype=torch.bool)
    if disagree.shape != (n_total - n_train,):
        raise ValueError(
            f"disagree must flag each of the {n_total - n_train} rows after n_train={n_train}, got {tuple(disagree.shape)}"
        )
    if disagree.all() or not disagree.any():
        raise ValueError("disagree must hold both agreeing and disagreeing rows to compare them")
    result: dict[str, dict] = {}
    for side, mask in (("agree", ~disagree), ("disagree", disagree)):
        rows = torch.cat([torch.arange(n_train), n_train + torch.nonzero(mask).flatten()])
        acts = {m: {layer: a[rows] for layer, a in layers.items()} for m, layers in activations.items()}
        scored: dict[str, ProbeResult] = probe_concepts(
            acts, {c: labels[c][rows] for c in concepts}, n_train, concepts=concepts, control=False
        )
        for concept, res in scored.items():
            entry = result.setdefault(concept, {})
            entry[side] = res.scores
            entry["rate_" + side] = float(labels[concept][rows[n_train:]].float().mean())
    return result
