"""Optional Stockfish labels: the engine's best move and WDL class instead of the teacher's.

Stockfish (GPL-3) runs as a separate process over UCI through python-chess's ``chess.engine``; nothing of it is
imported or shipped. Install it with Debian's package (``apt-get install stockfish``) or point the ``STOCKFISH``
environment variable at a binary. Concept labels (material, hanging pieces, ...) stay exact, by code
(:mod:`agents.chess.teacher`); only the training targets change.

Each position is searched to a fixed depth on one thread after a ``ucinewgame`` (hash cleared), so labels are
deterministic for a given Stockfish build.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from agents.chess.teacher import DRAW, LOSS, WIN
from envs.chess.moves import move_to_index, require_chess

if TYPE_CHECKING:  # pragma: no cover
    import chess

__all__ = ["find_stockfish", "StockfishLabeller"]

DEBIAN_GAMES_DIR = "/usr/games"  # where Debian's ``stockfish`` package puts the binary (not on root's PATH)


def find_stockfish() -> str | None:
    """The Stockfish binary: ``$STOCKFISH``, else ``stockfish`` on ``PATH`` or in Debian's games folder."""
    if os.environ.get("STOCKFISH"):
        return os.environ["STOCKFISH"]
    return shutil.which("stockfish", path=os.pathsep.join([os.environ.get("PATH", ""), DEBIAN_GAMES_DIR]))


class StockfishLabeller:
    """``labeller(board) -> (move, policy index, WDL class)`` from a depth-``depth`` Stockfish search.

    The WDL class is the most likely of Stockfish's own win/draw/loss estimate (``model="sf"``) for the side to
    move: 0 win, 1 draw, 2 loss, as :mod:`agents.chess.teacher`. Use as a context manager (the engine process
    is closed on exit, also after an error)::

        with StockfishLabeller(depth=8) as sf:
            move, index, wdl = sf(board)
    """

    def __init__(self, depth: int = 8, path: str | None = None, hash_mb: int = 16) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth, self.hash_mb = depth, hash_mb
        self.path = path or find_stockfish()
        if self.path is None:
            raise FileNotFoundError(
                "Stockfish labels need the Stockfish engine: install Debian's package (apt-get install "
                "stockfish) or set STOCKFISH to the binary's path"
            )
        self._engine = None

    def __enter__(self) -> StockfishLabeller:
        require_chess()
        import chess.engine

        self._engine = chess.engine.SimpleEngine.popen_uci(self.path)
        try:
            self._engine.configure({"Threads": 1, "Hash": self.hash_mb})
        except BaseException:  # __exit__ does not run when __enter__ fails: close the process here
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._engine is not None:
            self._engine.quit()
            self._engine = None

    def __call__(self, board: chess.Board) -> tuple[chess.Move, int, int]:
        if self._engine is None:
            raise RuntimeError(
                "use StockfishLabeller as a context manager: `with StockfishLabeller() as sf:`"
            )
        import chess.engine

        info = self._engine.analyse(board, chess.engine.Limit(depth=self.depth), game=object())
        move = info["pv"][0]
        wdl = info["score"].wdl(model="sf", ply=board.ply()).relative
        probs = (wdl.wins, wdl.draws, wdl.losses)
        return move, move_to_index(board, move), (WIN, DRAW, LOSS)[probs.index(max(probs))]
