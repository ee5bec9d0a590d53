"""Interpreting the Leela-style chess net with rlhook: attributions on the board, concept probes, causal checks.

Everything goes through rlhook's methods (``Saliency``, ``IntegratedGradients``, ``LRP``, ``ActivationCaching``,
``Probing``, ``ActivationPatching``, ``HookedModule.run``); this module only prepares chess data and maps results
back to the board.

- :func:`concept_positions`: positions from :func:`~agents.chess.positions.play_positions` as a TensorDict with
  planes, the teacher's labels and concepts, per-square "their piece hangs" maps, and the FENs.
- :func:`explain`: saliency / integrated gradients / LRP of the best legal move's logit and of each of W, D, L,
  summed over planes and per piece plane, un-mirrored to white's view (``(8, 8)`` ``[rank, file]``), and
  :func:`draw_explanation` to draw them with the move arrow (:mod:`rlhook.plot.board`).
- :func:`layer_activations` and :func:`probe_concepts`: linear probes of each concept on ``inputconv``,
  ``block0..5`` with controls: the same architecture at random init, the raw input planes, shuffled labels.
- :func:`hanging_pairs` / :func:`patch_hanging`: a position where their piece hangs and the same position with
  a defender added; patching each block's activations from the hanging into the defended run and back moves
  the capture move's logit. :func:`ablate_direction` projects a probe direction out of a block.

Coordinates: planes are from the side to move's view (row r of a plane is board rank r for white to move,
rank 7 - r for black); :func:`to_board_view` flips black's maps back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from agents.chess.net import LeelaNet, load_checkpoint
from agents.chess.positions import play_positions
from agents.chess.teacher import PIECE_VALUES
from envs.chess.moves import POLICY_INDEX, legal_move_mask, require_chess
from envs.chess.planes import board_to_planes
from rlhook import HookedModule
from rlhook.attribution import LRP, IntegratedGradients, MergeBatchNorm, Saliency
from rlhook.attribution.lrp import Composite, Epsilon, Residual, Rule
from rlhook.attribution.lrp.rules import stabilize
from rlhook.latent import (
    ActivationCaching,
    ActivationPatching,
    Probing,
    balanced_accuracy,
    probe_with_controls,
)
from rlhook.targets import WDL

if TYPE_CHECKING:  # pragma: no cover
    import chess

__all__ = [
    "CHECKPOINTS",
    "LAYERS",
    "CONCEPTS",
    "PIECE_NAMES",
    "concept_positions",
    "enriched_rows",
    "to_board_view",
    "load_net",
    "random_net",
    "best_moves",
    "explain",
    "lrp_composite",
    "SqueezeExciteRule",
    "draw_explanation",
    "layer_activations",
    "probe_concepts",
    "ProbeResult",
    "hanging_pairs",
    "patch_hanging",
    "ablate_direction",
    "RawPlanes",
    "probe_squares",
    "probe_direction",
    "pairs_td",
    "hanging_squares",
    "square_labels",
    "SQUARE_CONCEPTS",
    "HangingPair",
    "CaptureLogit",
    "move_uci_white_view",
]

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
LAYERS = ("inputconv", *(f"block{i}" for i in range(6)))
#: name -> task; binary concepts are "> 0" of the teacher's label (hanging values, check, mate)
CONCEPTS = {
    "material": "regression",
    "mobility": "regression",
    "their_hanging": "classification",
    "own_hanging": "classification",
    "in_check": "classification",
    "mate_in_one": "classification",
}
PIECE_NAMES = ("P", "N", "B", "R", "Q", "K")
#: per-square concepts: name -> (planes whose pieces the probe is fitted on, or None for every square)
SQUARE_CONCEPTS = {"their_hanging": (6, 11), "own_hanging": (0, 5), "attacked_by_them": None}
#: planes of the current position (our P..K, their P..K) and the auxiliary planes: the raw-input control
CURRENT_PLANES = list(range(12))
PIECE_PLANES = 104  # planes 0..103 hold pieces (8 history steps x 13); 104..111 castling, side, rule 50, ones


# -- data ----------------------------------------------------------------------------------------------------------
def _square_view(square: int, black: bool) -> tuple[int, int]:
    """``(row, col)`` of a board square (a1 = 0) in the side-to-move planes."""
    rank, file = divmod(square, 8)
    return (7 - rank if black else rank), file


def square_labels(board: chess.Board) -> dict[str, np.ndarray]:
    """Per-square 0/1 maps ``(8, 8)`` in plane view: ``their_hanging`` (their non-king piece attacked by the
    side to move and not defended: the per-square version of the teacher's label), ``own_hanging`` (the same
    for our pieces) and ``attacked_by_them`` (every square the opponent attacks)."""
    out = {k: np.zeros((8, 8), dtype=np.int64) for k in SQUARE_CONCEPTS}
    us = board.turn
    black = not us
    for square, piece in board.piece_map().items():
        if piece.piece_type == 6:
            continue
        owner = piece.color
        if board.is_attacked_by(not owner, square) and not board.is_attacked_by(owner, square):
            out["own_hanging" if owner == us else "their_hanging"][_square_view(square, black)] = 1
    for square in range(64):
        if board.is_attacked_by(not us, square):
            out["attacked_by_them"][_square_view(square, black)] = 1
    return out


def hanging_squares(board: chess.Board) -> np.ndarray:
    """``(8, 8)`` plane-view map of their hanging pieces (see :func:`square_labels`)."""
    return square_labels(board)["their_hanging"]


def concept_positions(n: int, seed: int, **options: Any) -> tuple[TensorDict, list[str]]:
    """``n`` positions from ``play_positions(n, seed, **options)`` and their FENs.

    The TensorDict (batch ``[n]``) holds ``"board"`` (n, 112, 8, 8) planes, ``"move"`` the teacher's policy
    index, ``"legal"`` (n, 1858) bool, ``"wdl"`` class, ``"black"`` (side to move), ``("concept", name)`` for
    ``material``, ``mobility`` (floats) and ``their_hanging``, ``own_hanging``, ``in_check``, ``mate_in_one``
    (0/1), ``("value", "their_hanging")`` (the hanging value 0..9) and ``("square", name)`` (n, 8, 8)
    plane-view 0/1 maps of :func:`square_labels`.
    """
    planes, fens, rows = [], [], {k: [] for k in (*CONCEPTS, "move", "wdl", "black", "hang_value")}
    legal, squares = [], []
    for board, lab in play_positions(n, seed, **options):
        planes.append(board_to_planes(board))
        legal.append(legal_move_mask(board))
        squares.append(square_labels(board))
        fens.append(board.fen())
        rows["move"].append(lab.move_index)
        rows["wdl"].append(lab.wdl)
        rows["black"].append(not board.turn)
        rows["hang_value"].append(lab.their_hanging)
        for name, task in CONCEPTS.items():
            v = getattr(lab, name)
            rows[name].append(float(v) if task == "regression" else int(v > 0))
    td = TensorDict(
        {
            "board": torch.stack(planes),
            "legal": torch.stack(legal),
            "move": torch.tensor(rows["move"]),
            "wdl": torch.tensor(rows["wdl"]),
            "black": torch.tensor(rows["black"]),
            "concept": {k: torch.tensor(rows[k]) for k in CONCEPTS},
            "value": {"their_hanging": torch.tensor(rows["hang_value"])},
            "square": {k: torch.from_numpy(np.stack([q[k] for q in squares])) for k in SQUARE_CONCEPTS},
        },
        batch_size=[len(planes)],
    )
    return td, fens


def enriched_rows(labels: torch.Tensor, rate: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Row indices that keep every positive of the 0/1 ``labels`` ``(N,)`` and enough random negatives that
    positives make up ``rate`` of the rows (all negatives if there are too few), in seeded random order.

    Probe data for rare concepts: mate in one holds in 0.7% of :func:`concept_positions`, so
    ``td[enriched_rows(td["concept", "mate_in_one"])]`` of 30,000 positions gives about 1,000 rows, 20% positive.
    """
    if not 0 < rate < 1:
        raise ValueError(f"rate must be a share of positives in (0, 1), got {rate}")
    labels = labels.reshape(-1)
    values = set(torch.unique(labels).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got values {sorted(values)}")
    pos, neg = torch.nonzero(labels == 1).flatten(), torch.nonzero(labels == 0).flatten()
    if len(pos) == 0:
        raise ValueError(f"no positive among the {len(labels)} rows: generate more positions")
    g = torch.Generator().manual_seed(seed)
    n_neg = min(len(neg), round(len(pos) * (1 - rate) / rate))
    rows = torch.cat([pos, neg[torch.randperm(len(neg), generator=g)[:n_neg]]])
    return rows[torch.randperm(len(rows), generator=g)]


def to_board_view(maps: torch.Tensor, black: bool | torch.Tensor) -> torch.Tensor:
    """Plane-view maps ``(..., 8, 8)`` -> white's view (rows flipped where ``black``); batch-aware for a
    ``(B,)`` bool ``black`` when ``maps`` is ``(B, ..., 8, 8)``."""
    if isinstance(black, bool):
        return maps.flip(-2) if black else maps
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return torch.where(black.reshape(shape), maps.flip(-2), maps)


# -- nets ----------------------------------------------------------------------------------------------------------
def load_net(name: str = "final") -> LeelaNet:
    """A shipped checkpoint by short name (``"step450"``, ``"step900"``, ``"step1350"``, ``"final"``), eval mode."""
    return load_checkpoint(CHECKPOINTS / f"leela_6x32_{name}.pt")


def random_net(seed: int = 0) -> LeelaNet:
    """The same architecture at random init (eval mode, fresh batch-norm statistics): the untrained control."""
    torch.manual_seed(seed)
    return LeelaNet().eval()


def best_moves(net: nn.Module, td: TensorDictBase) -> torch.Tensor:
    """``(N,)`` policy index of the net's best *legal* move (reads ``"board"``, ``"legal"``)."""
    with torch.no_grad():
        out = net(td.select("board").clone())
    return out["policy"].masked_fill(~td["legal"], float("-inf")).argmax(-1)


# -- attributions --------------------------------------------------------------------------------------------------
class _Targets:
    """``{"move": logit of the move at "best_move", "value": P(W) - P(L), "W", "D", "L": probabilities}``."""

    def __call__(self, out: TensorDictBase) -> TensorDict:
        logit = out["policy"].gather(-1, out["best_move"].long()[..., None]).squeeze(-1)
        wdl = WDL(("W", "D", "L", "score"))(out)
        return TensorDict(
            {"move": logit, "value": wdl["score"], **{k: wdl[k] for k in "WDL"}}, batch_size=out.batch_size
        )


TARGETS = ("move", "value", "W", "D", "L")


def _baseline(board: torch.Tensor) -> torch.Tensor:
    """Zero the piece planes (0..103), keep castling, side to move, rule 50 and the all-ones plane."""
    base = board.clone()
    base[:, :PIECE_PLANES] = 0
    return base


class SqueezeExciteRule(Rule):
    """LRP through lc0's SE unit ``sigmoid(gamma(x)) * x + beta(x)`` (``gamma, beta`` from the board mean of
    ``x``): the gate is a constant weight and gets no relevance (as gates in LRP for LSTMs) and ``beta`` is a
    bias that keeps its share: ``R_x = sigmoid(gamma) x R / stab(sigmoid(gamma) x + beta)``."""

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def relevance(self, module, inputs, relevance):
        x = inputs[0].detach()
        with torch.no_grad():
            gamma, beta = module.fc2(module.act(module.fc1(x.mean(dim=(2, 3))))).chunk(2, dim=1)
            gated = torch.sigmoid(gamma)[..., None, None] * x
            return (gated * relevance / stabilize(gated + beta[..., None, None], self.eps),)


def lrp_composite(net: LeelaNet, eps: float = 1e-6) -> Composite:
    """LRP-epsilon for :class:`LeelaNet`: ``Residual`` splits each block's relevance between the skip and the
    conv1 -> conv2 -> se branch (a plain ``x + branch`` would count the skip's relevance twice) and
    :class:`SqueezeExciteRule` passes it through the SE gates; convs and linears ``Epsilon(eps)``, ReLU and
    (merged) batch norms ``Pass``. Use with ``MergeBatchNorm`` (see :func:`explain`)."""
    names: dict[str, Rule] = {}
    for i, block in enumerate(net.residual_blocks):
        names[f"block{i}"] = Residual(("conv1", "conv2", "se"), eps=eps)
        if not isinstance(block.se, nn.Identity):
            names[f"block{i}.se"] = SqueezeExciteRule(eps)
    return Composite(names=names, rule=Epsilon(eps))


def explain(
    net: nn.Module,
    td: TensorDictBase,
    methods: Sequence[str] = ("saliency", "ig", "lrp"),
    *,
    ig_steps: int = 32,
) -> dict[str, dict[str, torch.Tensor]]:
    """Attributions of the best legal move's logit, the value P(W) - P(L) and P(W), P(D), P(L) onto the board.

    Reads ``"board"``, ``"legal"``, ``"black"``. Returns ``{method: {target: maps}}`` where, per target in
    ``("move", "value", "W", "D", "L")``, ``maps[target]`` is ``(N, 8, 8)`` (summed over all 112 planes) and
    ``maps[target + "/pieces"]`` is ``(N, 12, 8, 8)`` (current-position piece planes: ours P..K then theirs),
    both in white's view ``[rank, file]``. Saliency is ``|gradient|``; IG runs from a baseline with the piece
    planes zeroed (``("baseline", "board")``); LRP is LRP-epsilon with batch norms merged into the convs and the
    residual blocks and SE units handled by :func:`lrp_composite`.
    """

    x = td.select("board", "legal", "black").clone()
    x["best_move"] = best_moves(net, x)
    x["baseline", "board"] = _baseline(x["board"])
    factories = {
        "saliency": lambda: Saliency(_Targets(), inputs=["board"]),
        "ig": lambda: IntegratedGradients(_Targets(), inputs=["board"], n_steps=ig_steps, delta=False),
        "lrp": lambda: LRP(
            _Targets(),
            inputs=["board"],
            composite=lrp_composite(net),
            canonizers=[MergeBatchNorm(_bn_pairs(net))],
            start="gradient",  # the value (W - L of softmax probabilities) is not linear in the WDL logits
        ),
    }
    result: dict[str, dict[str, torch.Tensor]] = {}
    for method in methods:
        with factories[method]().prepare(net) as hooked:
            out = hooked(x.clone())
        maps: dict[str, torch.Tensor] = {}
        for t in TARGETS:
            a = out["attr", t, "board"]
            maps[t] = to_board_view(a.sum(1), x["black"])
            maps[t + "/pieces"] = to_board_view(a[:, CURRENT_PLANES], x["black"])
        result[method] = maps
    result["best_move"] = {"index": x["best_move"]}
    return result


def _bn_pairs(net: nn.Module) -> list[tuple[str, str]]:
    """(conv path, batch-norm path) of every ConvBN of the net, for ``MergeBatchNorm``."""
    return [
        (f"{name}.conv", f"{name}.bn")
        for name, mod in net.named_modules()
        if hasattr(mod, "conv") and hasattr(mod, "bn")
    ]


def move_uci_white_view(index: int, black: bool) -> str:
    """The UCI string of policy index ``index`` in board coordinates (the index is in the mover's view)."""
    uci = POLICY_INDEX[index]
    if not black:
        return uci
    flip = lambda s: s[0] + str(9 - int(s[1]))  # noqa: E731
    return flip(uci[:2]) + flip(uci[2:4]) + uci[4:]


def draw_explanation(
    maps: dict[str, dict[str, torch.Tensor]],
    i: int,
    fen: str,
    out: Path,
    *,
    prefix: str = "position",
) -> list[Path]:
    """PNGs for example ``i`` of :func:`explain`'s result: one grid per method (move, W, D, L; summed over
    planes) and one per-piece-plane grid per method for the move target. Returns the paths written."""
    from rlhook.plot import board_grid

    black = fen.split()[1] == "b"
    arrow = move_uci_white_view(int(maps["best_move"]["index"][i]), black)
    side = ("black", "white") if black else ("white", "black")
    plane_titles = [f"{side[0]} {p}" for p in PIECE_NAMES] + [f"{side[1]} {p.lower()}" for p in PIECE_NAMES]
    paths = []
    for method, m in maps.items():
        if method == "best_move":
            continue
        grid = torch.stack([m[t][i] for t in TARGETS])
        titles = [f"{method}: best move {arrow}", f"{method}: value W-L"] + [
            f"{method}: P({w})" for w in ("win", "draw", "loss")
        ]
        paths.append(
            board_grid(
                grid,
                out / f"{prefix}_{method}.png",
                titles=titles,
                pieces=fen,
                arrows=arrow,
                shared_scale=False,
                ncols=5,
                diverging=method != "saliency",
                suptitle=f"{fen}  ({'black' if black else 'white'} to move)",
            )
        )
        paths.append(
            board_grid(
                m["move/pieces"][i],
                out / f"{prefix}_{method}_pieces.png",
                titles=plane_titles,
                pieces=fen,
                arrows=arrow,
                ncols=6,
                diverging=method != "saliency",
                suptitle=f"{method} of the best move's logit ({arrow}) per piece plane",
            )
        )
    return paths


# -- probes --------------------------------------------------------------------------------------------------------
class RawPlanes(nn.Module):
    """``planes``: the current position's 12 piece planes + the 8 auxiliary planes, (N, 20, 8, 8): the
    raw-input control of the probes (history planes left out: they repeat the current position)."""

    def __init__(self) -> None:
        super().__init__()
        self.planes = nn.Identity()

    def forward(self, board: torch.Tensor) -> torch.Tensor:
        return self.planes(torch.cat([board[:, :12], board[:, PIECE_PLANES:]], 1))


def layer_activations(
    net: nn.Module, td: TensorDictBase, paths: Sequence[str] = LAYERS, *, chunk: int = 1024
) -> dict[str, torch.Tensor]:
    """``{path: (N, C, 8, 8)}`` activations over ``td["board"]`` via ``ActivationCaching`` (in chunks)."""
    parts: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    in_keys = None if isinstance(net, LeelaNet) else ["board"]
    with ActivationCaching(list(paths)).prepare(net, in_keys=in_keys) as hooked, torch.no_grad():
        for s in range(0, len(td), chunk):
            out = hooked(td[s : s + chunk].select("board").clone())
            for p in paths:
                parts[p].append(out["cache", p])
    return {p: torch.cat(v) for p, v in parts.items()}


@dataclass
class ProbeResult:
    """Scores of one concept: ``scores[model][layer]`` (test R^2 or balanced accuracy) and the shuffled-label
    control ``control[model][layer]``; ``probes[model][layer]`` keeps the fitted probe (on standardised
    features: ``stats[model][layer] = (mean, std)``)."""

    concept: str
    metric: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    control: dict[str, dict[str, float]] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)


def _standardise(acts: dict[str, torch.Tensor], n_train: int, features: str) -> dict[str, Any]:
    out = {}
    for name, a in acts.items():
        x = a.flatten(1) if features == "flat" else torch.cat([a.amax((2, 3)), a.mean((2, 3))], 1)
        mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-3
        out[name] = ((x - mu) / sd, (mu, sd))
    return out


def _balanced_rows(y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Row indices with as many rows of each class (the larger class subsampled at random, seeded)."""
    pos, neg = torch.nonzero(y == 1).flatten(), torch.nonzero(y == 0).flatten()
    if len(pos) == 0 or len(neg) == 0:
        return torch.arange(len(y))
    small, big = (pos, neg) if len(pos) < len(neg) else (neg, pos)
    g = torch.Generator().manual_seed(seed)
    return torch.cat([small, big[torch.randperm(len(big), generator=g)[: len(small)]]]).sort().values


def probe_concepts(
    activations: dict[str, dict[str, torch.Tensor]],
    labels: dict[str, torch.Tensor],
    n_train: int,
    *,
    concepts: Sequence[str] | None = None,
    alpha: float = 100.0,
    C: float = 0.01,
    features: dict[str, str] | None = None,
    control: bool = True,
) -> dict[str, ProbeResult]:
    """Fit and score linear probes of each concept on each model's layer activations with ``Probing``.

    ``activations[model][layer]``: ``(N, C, 8, 8)``; the first ``n_train`` rows train, the rest test.
    ``labels[concept]``: ``(N,)``; ``concepts`` defaults to those of :data:`CONCEPTS` found in ``labels``.
    Regression concepts use ``RidgeProbe(alpha)`` (test R^2), binary ones a
    ``LogisticProbe(C)`` fitted on a class-balanced subsample (test balanced accuracy). Features, per task
    (``features``, default ``{"regression": "pooled", "classification": "flat"}``): the standardised flattened
    activation (``"flat"``) or the per-channel max and mean over the board (``"pooled"``: board-wide counts such
    as material are sums over squares). ``control`` adds the shuffled-label probe (``probe_with_controls``).
    """
    concepts = list(concepts or [c for c in CONCEPTS if c in labels])
    unknown = [c for c in concepts if c not in CONCEPTS or c not in labels]
    if unknown or not concepts:
        raise ValueError(
            f"no labels or no such concept for {unknown or 'any concept'}: concepts are {list(CONCEPTS)}, "
            f"labels given for {list(labels)}"
        )
    features = {"regression": "pooled", "classification": "flat", **(features or {})}
    cache: dict[str, dict] = {}
    results: dict[str, ProbeResult] = {}
    for concept in concepts:
        task = CONCEPTS[concept]
        metric = "r2" if task == "regression" else "balanced_accuracy"
        y = labels[concept]
        y = y.float() if task == "regression" else y.long()
        res = ProbeResult(concept, metric)
        rows = torch.arange(n_train) if task == "regression" else _balanced_rows(y[:n_train])
        if task == "classification" and len(torch.unique(y[:n_train])) < 2:
            continue
        kind = features[task]
        if kind not in cache:
            cache[kind] = {m: _standardise(a, n_train, kind) for m, a in activations.items()}
        feats = {model: {name: z for name, (z, _) in layers.items()} for model, layers in cache[kind].items()}
        found = probe_with_controls(
            feats,
            {concept: y},
            train=rows,
            test=torch.arange(n_train, len(y)),
            task=task,
            estimator="ridge" if task == "regression" else "logistic",
            alpha=alpha,
            C=C,
            metric=metric,
            shuffled=control,
        )
        for r in found:
            model, name = r["features"], r["layer"]
            res.scores.setdefault(model, {})[name] = r["score"]
            res.probes.setdefault(model, {})[name] = r["probe"]
            if control:
                res.control.setdefault(model, {})[name] = r["shuffled"]
        for model, layers in cache[kind].items():
            res.stats[model] = {name: st for name, (_, st) in layers.items()}
        results[concept] = res
    return results


def probe_squares(
    activations: dict[str, dict[str, torch.Tensor]],
    td: TensorDictBase,
    n_train: int,
    *,
    concept: str = "their_hanging",
    C: float = 0.1,
) -> ProbeResult:
    """Per-square probes of ``("square", concept)`` (default: their piece on this square hangs): one linear map
    of the channels at a square, shared by all squares (a 1x1 probe), fitted with ``Probing`` (class-balanced
    subsample, shuffled-label control) on the squares that hold the pieces of :data:`SQUARE_CONCEPTS` (their
    or our non-king pieces for the hanging concepts; every square for ``attacked_by_them``).

    Scores (balanced accuracy on the test squares) go to ``scores[model][layer]``; for the hanging concepts
    ``scores[model][layer + "/global"]`` is the balanced accuracy of the global concept predicted as "some
    square is predicted positive". Features are standardised per channel; ``stats`` keeps ``(mean, std)`` to
    map a probe back (:func:`probe_direction`).
    """
    planes = SQUARE_CONCEPTS[concept]
    board = td["board"]
    theirs = (
        board[:, planes[0] : planes[1]].sum(1) > 0
        if planes is not None
        else torch.ones(board.shape[0], 8, 8, dtype=torch.bool)
    )
    y_sq = td["square", concept].long()
    y_global = td["concept", concept].long() if concept in CONCEPTS else None
    res = ProbeResult(concept + "_square", "balanced_accuracy")
    train_rows = _balanced_rows(y_sq[:n_train][theirs[:n_train]])
    for model, layers in activations.items():
        feats, stats = {}, {}
        for name, a in layers.items():
            f = a.permute(0, 2, 3, 1)  # (N, 8, 8, C)
            flat = f[:n_train].reshape(-1, f.shape[-1])
            mu, sd = flat.mean(0), flat.std(0) + 1e-3
            feats[name], stats[name] = (f - mu) / sd, (mu, sd)
        probing = Probing(
            list(layers), task="classification", C=C, metrics=("balanced_accuracy",), control=True
        )

        def squares(rows: slice, feats: dict = feats) -> TensorDict:
            sel = theirs[rows]
            return TensorDict(
                {"cache": {n: z[rows][sel] for n, z in feats.items()}, "labels": y_sq[rows][sel]},
                batch_size=[int(sel.sum())],
            )

        probing.fit(squares(slice(0, n_train))[train_rows])  # cached activations: no model is needed
        scored = probing.score(squares(slice(n_train, None)))
        res.scores[model], res.control[model] = {}, {}
        for name in layers:
            res.scores[model][name] = float(scored["probe", name, "balanced_accuracy"][0])
            res.control[model][name] = float(scored["probe", name, "control_balanced_accuracy"][0])
            if y_global is None:
                continue
            z = feats[name][n_train:]
            pred = probing.probes[name].predict(z.reshape(-1, z.shape[-1])).reshape(z.shape[:3])
            hit = (pred.bool() & theirs[n_train:]).flatten(1).any(1).long()
            res.scores[model][name + "/global"] = balanced_accuracy(y_global[n_train:], hit)
        res.probes[model] = {n: probing.probes[n] for n in layers}
        res.stats[model] = stats
    return res


def probe_direction(result: ProbeResult, model: str, layer: str) -> torch.Tensor:
    """The (C,) unit direction in raw activation space of a per-square probe (``coef / std``)."""
    probe = result.probes[model][layer]
    _, sd = result.stats[model][layer]
    w = probe.coef_.reshape(-1).to(sd.dtype) / sd
    return w / w.norm()


# -- causal checks -------------------------------------------------------------------------------------------------
@dataclass
class HangingPair:
    """A position where their ``piece`` on ``square`` hangs and the teacher captures it with ``capture`` (policy
    index), and the same position with one of their pawns added to defend it (both as bare FENs)."""

    hanging: str
    defended: str
    square: int
    capture: int
    piece: str
    from_square: int
    defender: int


def hanging_pairs(fens: Sequence[str], limit: int = 64) -> list[HangingPair]:
    """Pairs built from ``fens`` (positions with history dropped): for each position where some capture of
    an undefended piece of theirs is legal, add their pawn on an empty square that defends the piece; keep
    the pair when, afterwards, the piece is defended, the capture is still legal, we are not in check, the
    position is valid, and the side to move is unchanged. The most valuable hanging piece is used."""
    chess = require_chess()
    from envs.chess.moves import move_to_index

    pairs: list[HangingPair] = []
    for fen in fens:
        board = chess.Board(fen)
        if board.is_check():
            continue
        them = not board.turn
        targets = []
        for move in board.legal_moves:
            piece = board.piece_at(move.to_square)
            if piece is None or piece.color != them or piece.piece_type == chess.KING:
                continue
            if board.is_attacked_by(them, move.to_square) or move.promotion:
                continue
            targets.append((PIECE_VALUES[piece.piece_type], -move.from_square, move, piece))
        if not targets:
            continue
        _, _, move, piece = max(targets, key=lambda t: (t[0], t[1]))
        sq = move.to_square
        rank, file = divmod(sq, 8)
        # a pawn of theirs defends sq from one rank "behind" it (from their side), one file left or right
        pr = rank + 1 if them == chess.BLACK else rank - 1
        done = None
        for pf in (file - 1, file + 1):
            if not (0 <= pf < 8 and 1 <= pr <= 6):
                continue
            psq = pr * 8 + pf
            if board.piece_at(psq) is not None or psq == move.from_square:
                continue
            defended = board.copy(stack=False)
            defended.set_piece_at(psq, chess.Piece(chess.PAWN, them))
            defended.ep_square = None
            if (
                defended.is_valid()
                and not defended.is_check()
                and defended.is_attacked_by(them, sq)
                and move in defended.legal_moves
            ):
                done = defended
                break
        else:
            psq = -1
        if done is None:
            continue
        bare = board.copy(stack=False)
        bare.ep_square = None
        pairs.append(
            HangingPair(
                bare.fen(),
                done.fen(),
                sq,
                move_to_index(bare, move),
                chess.piece_name(piece.piece_type),
                move.from_square,
                psq,
            )
        )
        if len(pairs) >= limit:
            break
    return pairs


def pairs_td(pairs: Sequence[HangingPair]) -> TensorDict:
    """``"board"`` = defended planes, ``("patched", "board")`` = hanging planes, ``"capture"`` index, ``"legal"``,
    and ``(N, 1, 8, 8)`` plane-view masks of the hanging piece's ``"square"``, the capturer's ``"from"``
    square and the added ``"defender"``."""
    chess = require_chess()
    hang = [chess.Board(p.hanging) for p in pairs]
    dfd = [chess.Board(p.defended) for p in pairs]
    out = TensorDict(
        {
            "board": torch.stack([board_to_planes(b) for b in dfd]),
            ("patched", "board"): torch.stack([board_to_planes(b) for b in hang]),
            "capture": torch.tensor([p.capture for p in pairs]),
            "legal": torch.stack([legal_move_mask(b) for b in dfd]),
        },
        batch_size=[len(pairs)],
    )
    black = torch.tensor([b.turn == chess.BLACK for b in hang])
    out["square"] = _plane_mask([p.square for p in pairs], black)
    out["from"] = _plane_mask([p.from_square for p in pairs], black)
    out["defender"] = _plane_mask([p.defender for p in pairs], black)
    return out


class CaptureLogit:
    """Target: the policy logit of the capture move at ``"capture"`` (per example)."""

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        return out["policy"].gather(-1, out["capture"].long()[..., None]).squeeze(-1)


def _plane_mask(squares: Sequence[int], black: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 8, 8)`` bool masks of board squares (a1 = 0), in each example's plane view."""
    mask = torch.zeros(len(squares), 1, 8, 8, dtype=torch.bool)
    for i, (sq, b) in enumerate(zip(squares, black.tolist())):
        mask[i, 0][_square_view(sq, b)] = True
    return mask


def patch_hanging(
    net: nn.Module,
    td: TensorDictBase,
    paths: Sequence[str] = LAYERS,
    *,
    reverse: bool = False,
    squares: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Patch each layer's activations from the hanging run into the defended run (``reverse``: defended into
    hanging) with ``ActivationPatching``; ``squares`` ``(N, 1, 8, 8)`` bool (plane view) patches only those
    squares' channel vectors. Returns ``{layer: (N,) change of the capture move's logit}`` and
    ``{layer + "/restored": change / (source - clean)}`` plus ``"clean"`` and ``"source"``: the capture
    logits of the two unpatched runs."""
    x = td.exclude("legal", "square", "from", "defender").clone()
    if reverse:
        x["board"], x["patched", "board"] = td["patched", "board"], td["board"]
    patch_fn = None if squares is None else (lambda clean, source: torch.where(squares, source, clean))
    result: dict[str, torch.Tensor] = {}
    with ActivationPatching(list(paths), target=CaptureLogit(), patch_fn=patch_fn).prepare(net) as hooked:
        out = hooked(x.clone())
    with torch.no_grad():
        result["clean"] = CaptureLogit()(net(x.select("board", "capture").clone()))
        result["source"] = CaptureLogit()(net(x.select("capture").set("board", x["patched", "board"])))
    gap = result["source"] - result["clean"]
    for p in paths:
        result[p] = out["patch_effect", p].detach()
        result[p + "/restored"] = result[p] / gap
    return result


def ablate_direction(
    net: nn.Module, td: TensorDictBase, layer: str, direction: torch.Tensor, mean: float | None = None
) -> torch.Tensor:
    """Capture-move logit after the component of ``layer``'s activation along ``direction`` (C,) is set to
    ``mean`` (its dataset mean; default: the batch mean) at every square, minus the unablated logit; (N,).

    Uses ``HookedModule.run`` with ``run.set``: ``a <- a + (mean - a.u) u`` per square, ``u`` unit-norm."""
    u = (direction / direction.norm()).reshape(1, -1, 1, 1)
    x = td.select("board", "capture").clone()
    with torch.no_grad():
        base = CaptureLogit()(net(x.clone()))
    hooked = HookedModule(net)

    def project(a: torch.Tensor) -> torch.Tensor:
        c = (a * u).sum(1, keepdim=True)
        target = c.mean() if mean is None else torch.as_tensor(mean, dtype=a.dtype)
        return a + (target - c) * u

    with torch.no_grad(), hooked.run(x.clone()) as run:
        run.set(layer, project)
    return CaptureLogit()(run.output) - base
