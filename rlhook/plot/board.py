"""Chess-board heatmaps: 8x8 maps drawn from white's view (files a-h left to right, rank 8 on top), with
the pieces as unicode symbols and an optional move arrow; a grid variant draws one board per map (per piece
plane, per W/D/L target ...).

No chess library is needed: the caller passes the piece placement, either as a FEN (the placement field is
enough) or as an 8x8 array of piece letters indexed ``[rank][file]`` (``"P"`` white pawn ... ``"k"`` black
king, ``""``/``"."``/``None`` empty). Values are indexed ``[rank, file]`` too, rank 0 = rank 1, file 0 = file
a, in the board's own (white's view) coordinates: un-mirror side-to-move planes before drawing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhook.plot.heatmap import pyplot, save_figure

__all__ = ["board_heatmap", "board_grid", "parse_placement", "PIECE_SYMBOLS"]

FILES = "abcdefgh"
PIECE_SYMBOLS = {
    "K": "\u2654",
    "Q": "\u2655",
    "R": "\u2656",
    "B": "\u2657",
    "N": "\u2658",
    "P": "\u2659",
    "k": "\u265a",
    "q": "\u265b",
    "r": "\u265c",
    "b": "\u265d",
    "n": "\u265e",
    "p": "\u265f",
}

Pieces = str | Sequence[Sequence[Any]] | None
Square = int | str
Arrow = str | tuple[Square, Square] | None


def parse_placement(pieces: Pieces) -> list[list[str]]:
    """A FEN (or its placement field) or an 8x8 ``[rank][file]`` array -> 8x8 list of piece letters ("" empty)."""
    grid = [[""] * 8 for _ in range(8)]
    if pieces is None:
        return grid
    if isinstance(pieces, str):
        rows = pieces.split()[0].split("/")
        if len(rows) != 8:
            raise ValueError(f"a FEN placement has 8 ranks separated by '/', got {pieces!r}")
        for i, row in enumerate(rows):  # the FEN lists rank 8 first
            file = 0
            for ch in row:
                if ch.isdigit():
                    file += int(ch)
                elif ch in PIECE_SYMBOLS:
                    if file > 7:
                        break
                    grid[7 - i][file] = ch
                    file += 1
                else:
                    raise ValueError(f"unknown piece letter {ch!r} in FEN {pieces!r}")
            if file != 8:
                raise ValueError(f"rank {8 - i} of FEN {pieces!r} does not cover 8 files")
        return grid
    if len(pieces) != 8 or any(len(r) != 8 for r in pieces):
        raise ValueError("pieces must be a FEN or an 8x8 [rank][file] array of piece letters")
    for r in range(8):
        for f in range(8):
            p = pieces[r][f]
            p = "" if p in (None, ".", " ", 0) else str(p)
            if p and p not in PIECE_SYMBOLS:
                raise ValueError(f"unknown piece {p!r} at {FILES[f]}{r + 1}; use letters from 'KQRBNPkqrbnp'")
            grid[r][f] = p
    return grid


def _square(s: Square) -> tuple[int, int]:
    """``(file, rank)`` of a square given as 0..63 (a1 = 0, h8 = 63) or a name like ``"e4"``."""
    if isinstance(s, str):
        if len(s) != 2 or s[0] not in FILES or s[1] not in "12345678":
            raise ValueError(f"not a square name: {s!r}")
        return FILES.index(s[0]), int(s[1]) - 1
    s = int(s)
    if not 0 <= s < 64:
        raise ValueError(f"square index must be in 0..63, got {s}")
    return s % 8, s // 8


def _arrow_squares(arrow: Arrow) -> tuple[tuple[int, int], tuple[int, int]] | None:
    if arrow is None:
        return None
    if isinstance(arrow, str):  # UCI, e.g. "e2e4" or "e7e8q"
        if len(arrow) not in (4, 5):
            raise ValueError(f"an arrow is a UCI move like 'e2e4' or a (from, to) pair, got {arrow!r}")
        return _square(arrow[:2]), _square(arrow[2:4])
    a, b = arrow
    return _square(a), _square(b)


def _values(values: torch.Tensor | Any) -> torch.Tensor:
    v = torch.as_tensor(values).detach().float().cpu()
    if v.shape[-2:] != (8, 8):
        raise ValueError(f"board maps are (..., 8, 8) [rank, file], got shape {tuple(v.shape)}")
    return v


def _draw(
    ax: Any,
    v: torch.Tensor,
    grid: list[list[str]],
    arrow: Arrow,
    *,
    title: str,
    lim: float | None,
    diverging: bool,
    symbols: bool,
    fontsize: float,
) -> Any:
    """Draw one board on ``ax``; returns the image artist. ``v`` is (8, 8) [rank, file]."""
    lim = (float(v.abs().max()) or 1.0) if lim is None else lim
    kw = (
        {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}
        if diverging
        else {"cmap": "Reds", "vmin": 0.0, "vmax": lim}
    )
    # imshow with origin="lower": row 0 (rank 1) at the bottom, column 0 (file a) on the left
    im = ax.imshow(v.numpy(), origin="lower", interpolation="nearest", extent=(-0.5, 7.5, -0.5, 7.5), **kw)
    for r in range(8):
        for f in range(8):
            if (r + f) % 2 == 0:  # dark squares (a1 is dark): a faint hatch keeps the board readable
                ax.add_patch(_rect(f - 0.5, r - 0.5, alpha=0.08))
            p = grid[r][f]
            if p:
                text = PIECE_SYMBOLS[p] if symbols else p
                ax.text(f, r, text, ha="center", va="center", fontsize=fontsize, color="black")
    squares = _arrow_squares(arrow)
    if squares is not None:
        (f0, r0), (f1, r1) = squares
        ax.annotate(
            "",
            xy=(f1, r1),
            xytext=(f0, r0),
            arrowprops={
                "arrowstyle": "-|>",
                "color": "#2a9d2a",
                "lw": 2.5,
                "alpha": 0.85,
                "mutation_scale": 18,
            },
        )
    ax.set_xticks(range(8), list(FILES))
    ax.set_yticks(range(8), [str(r + 1) for r in range(8)])
    ax.tick_params(length=0, labelsize=7)
    ax.set_xlim(-0.5, 7.5)
    ax.set_ylim(-0.5, 7.5)
    ax.set_title(title, fontsize=8)
    return im


def _rect(x: float, y: float, alpha: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 1, 1, facecolor="black", alpha=alpha, edgecolor="none")


def board_heatmap(
    values: torch.Tensor,
    path: str | Path,
    *,
    pieces: Pieces = None,
    arrow: Arrow = None,
    title: str = "",
    diverging: bool = True,
    symbols: bool = True,
) -> Path:
    """Save one board heatmap as PNG.

    Args:
        values: ``(8, 8)`` map indexed ``[rank, file]`` in white's view (rank 0 = rank 1, file 0 = a).
        pieces: a FEN (placement field enough) or an 8x8 ``[rank][file]`` array of piece letters.
        arrow: a move to draw: UCI ``"e2e4"`` or a ``(from, to)`` pair of square names or indices (a1 = 0).
        diverging: symmetric blue-red scale (signed maps); ``False`` for non-negative maps (saliency).
        symbols: unicode chess symbols; ``False`` draws the FEN letters instead.
    """
    plt = pyplot()
    v = _values(values)
    if v.dim() != 2:
        raise ValueError(f"board_heatmap draws one (8, 8) map, got shape {tuple(v.shape)}; see board_grid")
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    im = _draw(
        ax,
        v,
        parse_placement(pieces),
        arrow,
        title=title,
        lim=None,
        diverging=diverging,
        symbols=symbols,
        fontsize=17,
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def board_grid(
    maps: torch.Tensor,
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    pieces: Pieces | Sequence[Pieces] = None,
    arrows: Arrow | Sequence[Arrow] = None,
    ncols: int = 4,
    shared_scale: bool = True,
    diverging: bool = True,
    symbols: bool = True,
    suptitle: str = "",
) -> Path:
    """Save ``K`` board heatmaps in a grid (one per piece plane, per target, per position ...).

    Args:
        maps: ``(K, 8, 8)`` maps indexed ``[k, rank, file]`` in white's view.
        titles: one per map.
        pieces: one placement for every board, or a sequence of ``K`` placements (FEN or 8x8 array).
        arrows: one arrow for every board, or a sequence of ``K`` (``None`` for no arrow).
        shared_scale: one colour scale for all maps (compare magnitudes across panels); else one each.
    """
    plt = pyplot()
    v = _values(maps)
    if v.dim() != 3:
        raise ValueError(f"board_grid needs (K, 8, 8) maps, got shape {tuple(v.shape)}")
    k = v.shape[0]
    grids = [parse_placement(p) for p in _placements(pieces, k)]
    arrow_list = _arrows(arrows, k)
    ncols = max(1, min(ncols, k))
    nrows = -(-k // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.3 * ncols + 0.8, 2.4 * nrows + 0.3), squeeze=False, layout="constrained"
    )
    lim = (float(v.abs().max()) or 1.0) if shared_scale else None
    im = None
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        im = _draw(
            ax,
            v[i],
            grids[i],
            arrow_list[i],
            title=titles[i] if titles is not None else "",
            lim=lim,
            diverging=diverging,
            symbols=symbols,
            fontsize=10,
        )
        if not shared_scale:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if shared_scale and im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return save_figure(fig, path)


def _placements(pieces: Pieces | Sequence[Pieces], k: int) -> list[Pieces]:
    """One placement repeated ``k`` times, or the ``k`` placements given."""
    if pieces is None or isinstance(pieces, str):
        return [pieces] * k
    first = pieces[0]
    many = first is None or isinstance(first, str) and "/" in first  # FENs
    many = many or (not isinstance(first, str) and not isinstance(first[0], str | type(None) | int))
    if not many:  # one 8x8 array
        return [pieces] * k
    if len(pieces) != k:
        raise ValueError(f"got {len(pieces)} placements for {k} maps")
    return list(pieces)


def _arrows(arrows: Arrow | Sequence[Arrow], k: int) -> list[Arrow]:
    """One arrow repeated ``k`` times, or the ``k`` arrows given (``None`` entries draw none)."""
    if arrows is None or isinstance(arrows, str):
        return [arrows] * k
    if len(arrows) == 2 and all(
        isinstance(a, int | str) and not (isinstance(a, str) and len(a) > 2) for a in arrows
    ):
        return [tuple(arrows)] * k  # one (from, to) pair
    if len(arrows) != k:
        raise ValueError(f"got {len(arrows)} arrows for {k} maps")
    return list(arrows)
