"""Play through TorchRL's ``ChessEnv`` with a Leela-style net as the policy.

:func:`make_chess_env` returns a stateful ``ChessEnv`` (FEN included) with a :class:`LeelaPlanes` transform
that writes the 112 input planes of the current position, history from the game itself, under ``"board"``.
:func:`make_leela_policy` chains the net (``"board"`` -> ``"policy"``, ``"wdl"``) with a :class:`MoveSelector`
that turns the 1858 logits into ``ChessEnv``'s action: an index into its list of SAN moves (29,275 entries).
The result is an ordinary TensorDictModule policy, so ``env.rollout`` and TorchRL collectors work, and hooks
on the net's paths (``"block3"``, ...) see every position played. Needs the ``rl`` and ``chess`` extras.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from torchrl.data import Unbounded
from torchrl.envs import ChessEnv, Transform, TransformedEnv

from envs.chess.moves import legal_move_indices, require_chess
from envs.chess.planes import HISTORY_FILLS, NUM_PLANES, board_to_planes

__all__ = ["LeelaPlanes", "MoveSelector", "make_chess_env", "make_leela_policy"]


class LeelaPlanes(Transform):
    """Writes ``(112, 8, 8)`` float planes of the base ``ChessEnv``'s current board (stateful env only);
    ``fill`` is the history fill of :mod:`envs.chess.planes` (``net.history_fill`` of the net that plays)."""

    def __init__(self, out_key: str = "board", fill: str = "zeros") -> None:
        super().__init__(in_keys=[], out_keys=[out_key])
        if fill not in HISTORY_FILLS:
            raise ValueError(
                f"unknown history fill {fill!r}; choose one of {HISTORY_FILLS} (see envs.chess.planes)"
            )
        self.fill = fill

    def _board(self):
        env = self.parent.base_env if self.parent is not None else None
        if env is None or not getattr(env, "stateful", False):
            raise RuntimeError("LeelaPlanes needs to sit on a stateful ChessEnv (it reads the env's board)")
        return env.board

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict.set(self.out_keys[0], board_to_planes(self._board(), self.fill))
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict_reset)

    def transform_observation_spec(self, observation_spec):
        observation_spec[self.out_keys[0]] = Unbounded(
            shape=(*observation_spec.shape, NUM_PLANES, 8, 8),
            dtype=torch.float32,
            device=observation_spec.device,
        )
        return observation_spec


class MoveSelector(TensorDictModuleBase):
    """``"policy"`` logits + ``"fen"`` -> ``"action"`` (ChessEnv SAN index) and ``"move_index"`` (lc0 index).

    Greedy (argmax over legal moves) when ``temperature`` is 0, else samples from the softmax of the legal
    logits divided by ``temperature``. Works on any batch shape.
    """

    def __init__(self, temperature: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_keys = ["policy", "fen"]
        self.out_keys = ["action", "move_index"]
        self.temperature = temperature
        self.generator = generator
        self._san_index = {san: i for i, san in enumerate(_san_moves())}

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        chess = require_chess()
        logits = tensordict.get("policy").detach()
        flat_logits = logits.reshape(-1, logits.shape[-1])
        fens = tensordict.get("fen")
        fens = fens.tolist() if hasattr(fens, "tolist") else fens
        fens = [fens] if isinstance(fens, str) else _flatten(fens)
        actions, moves = [], []
        for fen, row in zip(fens, flat_logits):
            board = chess.Board(fen)
            table = legal_move_indices(board)
            if not table:  # game over: any action, the env is done
                actions.append(0)
                moves.append(0)
                continue
            idx = torch.tensor(sorted(table))
            legal = row[idx].float()
            if self.temperature > 0:
                probs = torch.softmax(legal / self.temperature, dim=0)
                pick = int(idx[torch.multinomial(probs, 1, generator=self.generator)])
            else:
                pick = int(idx[legal.argmax()])
            moves.append(pick)
            actions.append(self._san_index[board.san(table[pick])])
        shape = logits.shape[:-1]
        tensordict.set("action", torch.tensor(actions, dtype=torch.int64).reshape(shape))
        tensordict.set("move_index", torch.tensor(moves, dtype=torch.int64).reshape(shape))
        return tensordict


def _san_moves() -> list[str]:
    moves = ChessEnv.san_moves  # a class-level property in TorchRL 0.14
    return moves() if callable(moves) else moves


def _flatten(items) -> list[str]:
    out = []
    for item in items:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def make_chess_env(fill: str = "zeros", **chess_env_kwargs) -> TransformedEnv:
    """A stateful ``ChessEnv`` with FENs, plus :class:`LeelaPlanes` writing ``"board"`` with history ``fill``."""
    chess_env_kwargs = {"stateful": True, "include_fen": True, **chess_env_kwargs}
    if not chess_env_kwargs["stateful"] or not chess_env_kwargs["include_fen"]:
        raise ValueError("make_chess_env needs stateful=True and include_fen=True")
    env = ChessEnv(**chess_env_kwargs)  # already a TransformedEnv when it masks actions
    return (
        env.append_transform(LeelaPlanes(fill=fill))
        if isinstance(env, TransformedEnv)
        else TransformedEnv(env, LeelaPlanes(fill=fill))
    )


def make_leela_policy(net: TensorDictModuleBase, temperature: float = 0.0, seed: int | None = None):
    """``TensorDictSequential(net, MoveSelector)``: ``"board"``, ``"fen"`` -> ``"policy"``, ``"wdl"``, ``"action"``.

    The net is the sequence's first module (path prefix ``"module.0."`` inside the sequence).
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return TensorDictSequential(net, MoveSelector(temperature, generator))
