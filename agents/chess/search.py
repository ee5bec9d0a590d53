"""A small deterministic PUCT search over a :class:`~agents.chess.net.LeelaNet`, every simulation recorded.

:func:`search` runs ``simulations`` PUCT simulations from each of B root boards in lockstep: each simulation
walks one path per root from the root to a new leaf, and the B leaves are evaluated by the net in one batch.
Nothing is random (no noise, no temperature; ties go to the lowest policy index), so the same boards give the
same tree. Values are ``P(W) - P(L)`` of the net's WDL head for the side to move at the leaf, or
:func:`terminal_value` where the game is over. Selection maximises ``Q + c_puct * P * sqrt(N) / (1 + n)``
with ``Q`` of an unvisited move = the node's mean value minus ``fpu``.

The result is a TensorDict with batch ``[B]``; every key lives under ``"search"``:

========================  ===========================================================================
key                       meaning (shapes for B roots, S simulations, D = ``max_depth``)
========================  ===========================================================================
``prior``                 (B, 1858) softmax of the net's logits over the root's legal moves (0 elsewhere)
``visits``                (B, 1858) root visit count of each move
``q``                     (B, 1858) mean backed-up value of each root move, root mover's view (0 unvisited)
``move``                  (B,) the search's move: most visits, then highest ``q``, then lowest index
``net_move``              (B,) the raw net's move: argmax of the legal logits
``root_value``            (B,) the net's value of the root
``sim``                   a TensorDict with batch ``[B, S]``, one row per simulation:
``sim.first``             root move the simulation went through (policy index)
``sim.path``              (B, S, D) policy indices along the path (mover's view), -1 after its end
``sim.depth``             plies from the root to the leaf (>= 1)
``sim.leaf``              (B, S, 112, 8, 8) uint8 planes of the leaf (the net's history fill)
``sim.value``             value of the leaf for its side to move (net or terminal)
``sim.backed``            the same from the root mover's view: ``(-1) ** depth * value``
``sim.terminal``          the leaf is a finished game (its value is :func:`terminal_value`)
========================  ===========================================================================

``q[a] == mean(sim.backed[sim.first == a])`` holds exactly, which is what :mod:`agents.chess.search_attribution`
uses to attribute the search's choice back to the board. :func:`search_paths` gives the moves of each
simulation as python-chess moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from tensordict import TensorDict

from envs.chess.moves import POLICY_SIZE, index_to_move, legal_move_indices, require_chess
from envs.chess.planes import board_to_planes

if TYPE_CHECKING:  # pragma: no cover
    import chess

    from agents.chess.net import LeelaNet

__all__ = ["SearchConfig", "terminal_value", "search", "search_paths", "net_value"]


@dataclass(frozen=True)
class SearchConfig:
    """``simulations`` per root, exploration ``c_puct``, first-play urgency reduction ``fpu``, and the
    longest path ``max_depth`` (a path stops there and its leaf is evaluated as is)."""

    simulations: int = 64
    c_puct: float = 1.5
    fpu: float = 0.3
    max_depth: int = 24

    def __post_init__(self) -> None:
        if self.simulations < 1 or self.max_depth < 1:
            raise ValueError(
                f"simulations and max_depth must be >= 1, got simulations={self.simulations}, "
                f"max_depth={self.max_depth}"
            )
        if self.c_puct <= 0:
            raise ValueError(f"c_puct must be positive (exploration weight), got {self.c_puct}")


def terminal_value(board: chess.Board) -> float | None:
    """The value of a finished game for the side to move, or ``None`` while the game goes on.

    Checkmate -1; stalemate, insufficient material, 50 moves without capture or pawn move (rule-50 count
    >= 100, as lc0 scores it) and threefold repetition 0. The search stops at these although the move
    mask still lists moves in all but mate and stalemate (see :func:`envs.chess.moves.legal_move_indices`).
    """
    if board.is_checkmate():
        return -1.0
    if (
        board.is_stalemate()
        or board.is_insufficient_material()
        or board.halfmove_clock >= 100
        or board.is_repetition(3)
    ):
        return 0.0
    return None


def net_value(wdl_logits: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` WDL logits -> ``(...,)`` value ``P(W) - P(L)`` for the side to move."""
    p = wdl_logits.softmax(-1)
    return p[..., 0] - p[..., 2]


@dataclass
class _Node:
    moves: list  # legal chess.Move, ordered by policy index
    index: np.ndarray  # (K,) policy indices
    prior: np.ndarray  # (K,)
    value: float  # value for this node's side to move (net or terminal)
    terminal: bool
    n: np.ndarray = field(init=False)
    w: np.ndarray = field(init=False)
    children: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.n = np.zeros(len(self.moves))
        self.w = np.zeros(len(self.moves))

    def select(self, config: SearchConfig) -> int:
        visited = self.n > 0
        mean = (self.value + self.w.sum()) / (1.0 + self.n.sum())  # w is from this node's side, like value
        q = np.where(visited, self.w / np.maximum(self.n, 1), mean - config.fpu)
        u = config.c_puct * self.prior * np.sqrt(1.0 + self.n.sum()) / (1.0 + self.n)
        return int(np.argmax(q + u))  # first maximum: the lowest policy index


def _expand(board: chess.Board, logits: torch.Tensor | None, value: float | None) -> _Node:
    table = legal_move_indices(board)
    index = np.array(sorted(table), dtype=np.int64)
    terminal = terminal_value(board)
    if terminal is not None or logits is None:
        prior = np.full(len(index), 1.0 / max(len(index), 1))
        return _Node([table[i] for i in index], index, prior, float(terminal or 0.0), True)
    prior = torch.softmax(logits[torch.from_numpy(index)].double(), 0).numpy()
    return _Node([table[i] for i in index], index, prior, float(value), False)


def _evaluate(
    net: LeelaNet, boards: Sequence[chess.Board]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    planes = torch.stack([board_to_planes(b, getattr(net, "history_fill", "zeros")) for b in boards])
    with torch.no_grad():
        heads = net.heads(planes)
    return planes, heads["policy"], net_value(heads["wdl"])


def search(net: LeelaNet, boards: Sequence[chess.Board], config: SearchConfig | None = None) -> TensorDict:
    """Run the PUCT search from each board (its move stack is the history) and record it; see the module
    docstring for the keys. The boards are left as they were."""
    config = config or SearchConfig()
    require_chess()
    boards = [b.copy() for b in boards]  # walked in place: the callers' boards stay untouched
    if not boards:
        raise ValueError("search needs at least one root board")
    for i, b in enumerate(boards):
        if terminal_value(b) is not None or not any(True for _ in b.legal_moves):
            raise ValueError(f"root {i} ({b.fen()}) is a finished game: there is nothing to search")
    B, S, D = len(boards), config.simulations, config.max_depth
    planes, logits, values = _evaluate(net, boards)
    roots = [_expand(b, logits[i], float(values[i])) for i, b in enumerate(boards)]
    rec = {
        "first": torch.zeros(B, S, dtype=torch.long),
        "path": torch.full((B, S, D), -1, dtype=torch.long),
        "depth": torch.zeros(B, S, dtype=torch.long),
        "leaf": torch.zeros(B, S, *planes.shape[1:], dtype=torch.uint8),
        "value": torch.zeros(B, S),
        "backed": torch.zeros(B, S),
        "terminal": torch.zeros(B, S, dtype=torch.bool),
    }
    for s in range(S):
        walks = []
        for i, (board, root) in enumerate(zip(boards, roots)):
            node, path = root, []
            while True:
                slot = node.select(config)
                path.append((node, slot))
                board.push(node.moves[slot])
                child = node.children.get(slot)
                if child is None or child.terminal or len(path) == D:
                    break
                node = child
            walks.append((i, path, child))
        fresh = [i for i, _, child in walks if child is None and terminal_value(boards[i]) is None]
        if fresh:
            leaf_planes, leaf_logits, leaf_values = _evaluate(net, [boards[i] for i in fresh])
        slot_of = {i: k for k, i in enumerate(fresh)}
        fill = getattr(net, "history_fill", "zeros")
        for i, path, child in walks:
            board = boards[i]
            k = slot_of.get(i)
            if child is None:
                child = (
                    _expand(board, None, None)
                    if k is None
                    else _expand(board, leaf_logits[k], float(leaf_values[k]))
                )
                path[-1][0].children[path[-1][1]] = child
            leaf = leaf_planes[k] if k is not None else board_to_planes(board, fill)
            sign = 1.0
            for node, slot in reversed(path):  # each parent scores its move from its own side
                sign = -sign
                node.n[slot] += 1
                node.w[slot] += sign * child.value
            depth = len(path)
            rec["first"][i, s] = int(path[0][0].index[path[0][1]])
            rec["path"][i, s, :depth] = torch.tensor([int(node.index[slot]) for node, slot in path])
            rec["depth"][i, s] = depth
            rec["leaf"][i, s] = leaf.to(torch.uint8)
            rec["value"][i, s] = child.value
            rec["backed"][i, s] = (-1.0) ** depth * child.value
            rec["terminal"][i, s] = child.terminal
            for _ in range(depth):
                board.pop()
    return _summary(roots, logits, values, rec, B, S)


def _summary(roots, logits, values, rec, B, S) -> TensorDict:
    prior = torch.zeros(B, POLICY_SIZE)
    visits = torch.zeros(B, POLICY_SIZE)
    q = torch.zeros(B, POLICY_SIZE)
    net_move = torch.zeros(B, dtype=torch.long)
    for i, root in enumerate(roots):
        idx = torch.from_numpy(root.index)
        prior[i, idx] = torch.from_numpy(root.prior).float()
        visits[i, idx] = torch.from_numpy(root.n).float()
        q[i, idx] = torch.from_numpy(np.where(root.n > 0, root.w / np.maximum(root.n, 1), 0.0)).float()
        net_move[i] = idx[int(torch.argmax(logits[i, idx]))]
    # most visits, then highest q, then lowest index (argmax returns the first maximum)
    key = visits * 4.0 + (q + 1.0) * (visits > 0)
    move = key.argmax(-1)
    sim = TensorDict(rec, batch_size=[B, S])
    return TensorDict(
        {
            "search": TensorDict(
                {
                    "prior": prior,
                    "visits": visits,
                    "q": q,
                    "move": move,
                    "net_move": net_move,
                    "root_value": values.float(),
                    "sim": sim,
                },
                batch_size=[B],
            )
        },
        batch_size=[B],
    )


def search_paths(board: chess.Board, record: TensorDict, root: int = 0) -> list[list[chess.Move]]:
    """The moves of every simulation of root ``root`` of ``record`` (:func:`search`'s output), replayed on
    ``board`` (that root): one list of python-chess moves per simulation."""
    sim = record["search", "sim"][root]
    out = []
    for s in range(sim.batch_size[0]):
        moves, b = [], board.copy()
        for idx in sim["path"][s, : int(sim["depth"][s])].tolist():
            move = index_to_move(b, idx)
            moves.append(move)
            b.push(move)
        out.append(moves)
    return out
