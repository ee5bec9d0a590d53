"""Positions from random and teacher play, labelled by :mod:`agents.chess.teacher`, packed for training.

Games start from the initial position. A non-terminal position is kept (and labelled) with probability
``keep``; from a kept position the game goes on with the teacher's move with probability ``teacher_prob``,
otherwise (and from every position not kept) with a random legal move: a random capture with probability
``capture_prob`` when there is one. Positions before ply ``min_ply`` are never kept; games stop
at ``max_plies`` or game over.
Everything is seeded: the same ``(n, seed)`` gives the same positions.

A dataset is a dict of numpy arrays of length N: ``words`` (N, 112) uint64 packed planes
(:func:`envs.chess.planes.unpack_planes`), ``move`` teacher policy index, ``wdl`` class, ``legal`` (N, 233)
uint8 packed legal-move mask (:func:`unpack_legal`), and the concepts of
:class:`~agents.chess.teacher.PositionLabels` (``material``, ``best_gain``, ``mate_in_one``, ``mate_threat``,
``in_check``, ``mobility``, ``their_hanging``, ``own_hanging``) plus ``rule`` (0 mate, 1 capture, 2 check,
3 quiet).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch

from agents.chess.teacher import PositionLabels, label_position
from envs.chess.moves import POLICY_SIZE, legal_move_indices, require_chess
from envs.chess.planes import board_to_bitplanes

if TYPE_CHECKING:  # pragma: no cover
    import chess

__all__ = ["RULES", "LABELS", "CONCEPTS", "play_positions", "make_dataset", "unpack_legal"]

RULES = ("mate", "capture", "check", "quiet")
LABELS = ("teacher", "stockfish")  # who gives the move and WDL targets
CONCEPTS = (
    "material",
    "best_gain",
    "mate_in_one",
    "mate_threat",
    "in_check",
    "mobility",
    "their_hanging",
    "own_hanging",
)


def play_positions(
    n: int,
    seed: int,
    keep: float = 0.4,
    teacher_prob: float = 0.6,
    capture_prob: float = 0.5,
    max_plies: int = 160,
    min_ply: int = 4,
) -> Iterator[tuple[chess.Board, PositionLabels]]:
    """Yield ``n`` labelled positions (the board is a copy holding its game's move stack)."""
    chess = require_chess()
    rng = random.Random(seed)
    made = 0
    while made < n:
        board = chess.Board()
        for ply in range(max_plies):
            if board.is_game_over(claim_draw=False):
                break
            labels = None
            if ply >= min_ply and rng.random() < keep:
                labels = label_position(board)
                yield board.copy(), labels
                made += 1
                if made >= n:
                    return
            if labels is not None and rng.random() < teacher_prob:
                move = labels.move
            else:
                moves = list(board.legal_moves)
                captures = [m for m in moves if board.is_capture(m)]
                move = rng.choice(captures if captures and rng.random() < capture_prob else moves)
            board.push(move)


def _dataset_part(args: tuple[int, int, dict]) -> dict[str, np.ndarray]:
    n, seed, options = args
    options = dict(options)
    labels, depth = options.pop("labels", "teacher"), options.pop("depth", 8)
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    if labels == "teacher":
        return _label_rows(n, seed, options, None)
    from agents.chess.stockfish import StockfishLabeller

    with StockfishLabeller(depth) as engine:
        return _label_rows(n, seed, options, engine)


def _label_rows(n: int, seed: int, options: dict, engine) -> dict[str, np.ndarray]:
    rows: dict[str, list] = {k: [] for k in ("words", "move", "wdl", "legal", "rule", *CONCEPTS)}
    for board, lab in play_positions(n, seed, **options):
        rows["words"].append(board_to_bitplanes(board))
        move, wdl = (lab.move_index, lab.wdl) if engine is None else engine(board)[1:]
        rows["move"].append(move)
        rows["wdl"].append(wdl)
        mask = np.zeros(POLICY_SIZE, dtype=bool)
        mask[list(legal_move_indices(board))] = True
        rows["legal"].append(np.packbits(mask))
        rows["rule"].append(RULES.index(lab.rule))
        for key in CONCEPTS:
            rows[key].append(int(getattr(lab, key)))
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["move"], out["wdl"], out["rule"] = (out[k].astype(np.int64) for k in ("move", "wdl", "rule"))
    return out


def make_dataset(
    n: int, seed: int, workers: int = 1, chunk: int = 2000, progress: bool = False, **options
) -> dict[str, np.ndarray]:
    """``n`` labelled positions as a dict of numpy arrays (see the module docstring).

    ``options`` go to :func:`play_positions`, except ``labels``: ``"teacher"`` (default) or ``"stockfish"``
    (``move`` and ``wdl`` from a depth-``depth`` Stockfish search, :mod:`agents.chess.stockfish`; the positions
    and the concept labels are the same).

    Work is cut into chunks of ``chunk`` positions seeded ``seed * 100003 + k``, so the result depends on
    ``(n, seed, chunk)`` only, never on ``workers``.
    """
    parts = [
        (min(chunk, n - start), seed * 100003 + k, options) for k, start in enumerate(range(0, n, chunk))
    ]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_dataset_part, parts)
            results = list(_progress(results, len(parts), progress))
    else:
        results = list(_progress(map(_dataset_part, parts), len(parts), progress))
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc="positions (chunks)")


def unpack_legal(packed: np.ndarray) -> torch.Tensor:
    """``(N, 233)`` packed masks -> ``(N, 1858)`` bool legal-move masks."""
    return torch.from_numpy(np.unpackbits(packed, axis=-1, count=POLICY_SIZE).astype(bool))
