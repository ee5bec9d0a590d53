"""Attributing the search's choice back to the board, net-vs-search figures and probes on disagreements."""

import random
from pathlib import Path

import pytest
import torch

chess = pytest.importorskip("chess")

from agents.chess.net import load_checkpoint  # noqa: E402
from agents.chess.search import SearchConfig, net_value, search  # noqa: E402
from agents.chess.search_attribution import (  # noqa: E402
    attribute_search,
    compare_net_and_search,
    probe_disagreement,
    track_pieces,
)

FINAL = Path(__file__).resolve().parents[1] / "agents" / "chess" / "checkpoints" / "leela_6x32_final.pt"
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing"),
]


def test_track_pieces_follows_every_piece_like_python_chess():
    rng = random.Random(0)
    kinds = {"castle": 0, "ep": 0, "promo": 0, "capture": 0}
    starts = [chess.STARTING_FEN, "r3k2r/pPpppppp/8/8/8/8/PpPPPPPP/R3K2R w KQkq - 0 1"]
    for game in range(40):
        board = chess.Board(starts[game % 2])
        for _ in range(rng.randrange(5)):  # a root somewhere inside a game
            legal = list(board.legal_moves)
            if legal:
                board.push(rng.choice(legal))
        root, moves, leaf = board.copy(), [], board.copy()
        for _ in range(rng.randrange(1, 25)):
            legal = list(leaf.legal_moves)
            if not legal:
                break
            special = [m for m in legal if leaf.is_castling(m) or leaf.is_en_passant(m) or m.promotion]
            move = rng.choice(special if special and rng.random() < 0.7 else legal)
            kinds["castle"] += leaf.is_castling(move)
            kinds["ep"] += leaf.is_en_passant(move)
            kinds["promo"] += bool(move.promotion)
            kinds["capture"] += leaf.is_capture(move)
            moves.append(move)
            leaf.push(move)
        where = track_pieces(root, moves)
        assert set(where) == set(leaf.piece_map())  # every piece on the leaf comes from the root
        assert len(set(where.values())) == len(where)
        for now, origin in where.items():
            was, piece = root.piece_at(origin), leaf.piece_at(now)
            assert was.color == piece.color
            assert was.piece_type == piece.piece_type or was.piece_type == chess.PAWN  # promoted
    assert all(kinds.values()), kinds
    with pytest.raises(ValueError, match="not legal"):
        track_pieces(chess.Board(), [chess.Move.from_uci("e2e5")])


@pytest.fixture(scope="module")
def attributed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = load_checkpoint(FINAL)
        boards = [
            chess.Board("4k3/8/8/3q4/8/8/3R4/4K3 w - - 0 1"),  # the rook takes a lone queen
            chess.Board("r1bqkbnr/pppp1ppp/2n5/4p3/3QP3/8/PPP2PPP/RNB1KBNR b KQkq - 0 3"),  # Nxd4
        ]
        rec = search(net, boards, SearchConfig(simulations=32))
        return net, boards, rec, attribute_search(net, boards, rec, n_steps=32)
    finally:
        torch.set_num_threads(threads)


def test_value_map_decomposes_the_chosen_moves_q(attributed):
    net, boards, rec, att = attributed
    sa, sr = att["search_attr"], rec["search"]
    for i in range(len(boards)):
        sim = sr["sim"][i]
        chosen = sim["first"] == sr["move"][i]
        live = chosen & ~sim["terminal"]
        assert int(sa["leaves"][i]) == int(live.sum()) > 0
        base = sim["leaf"][live].float()
        base[:, :104] = 0
        with torch.no_grad():
            v_base = net_value(net.heads(base)["wdl"])
        weights = (-1.0) ** sim["depth"][live].double() / int(chosen.sum())
        terminal_part = (sim["backed"][chosen & sim["terminal"]].double()).sum() / int(chosen.sum())
        expected = sr["q"][i, sr["move"][i]].double() - terminal_part - (weights * v_base.double()).sum()
        torch.testing.assert_close(sa["explained"][i].double(), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(
            sa["value"][i].sum(), sa["explained"][i] + sa["delta"][i], atol=1e-4, rtol=0
        )
        assert abs(float(sa["delta"][i])) < 0.1  # IG's quadrature error with 32 steps stays small


def test_maps_point_at_the_capture(attributed):
    _, boards, _, att = attributed
    sa = att["search_attr"]
    top = lambda m: [chess.square_name(int(s)) for s in m.reshape(64).abs().argsort(descending=True)[:3]]
    assert top(sa["prior"][0])[0] in ("d5", "d2") and top(sa["prior"][1])[0] == "d4"  # the queen or its taker
    assert "d2" in top(sa["value"][0])  # the capturing rook, followed from d5 back to its root square


def test_compare_and_probe_disagreement():
    from agents.chess.interpret import concept_positions, layer_activations

    net = load_checkpoint(FINAL)
    td, fens = concept_positions(220, seed=5)
    boards = [chess.Board(f) for f in fens[160:]]
    rec = search(net, boards, SearchConfig(simulations=24))
    figures = compare_net_and_search(rec, td["move"][160:])
    assert figures["n"] == 60 and 0.5 < figures["agree"] < 1.0, figures
    assert 0 <= figures["net_teacher"] <= 1 and 0 <= figures["search_teacher"] <= 1
    with pytest.raises(ValueError, match="one policy index per root"):
        compare_net_and_search(rec, td["move"][:3])
    disagree = rec["search", "move"] != rec["search", "net_move"]
    acts = {"trained": layer_activations(net, td, ["block2"])}
    labels = {"their_hanging": td["concept", "their_hanging"], "material": td["concept", "material"]}
    out = probe_disagreement(acts, labels, 160, disagree, ["their_hanging", "material"])
    for concept in ("their_hanging", "material"):
        assert set(out[concept]) == {"agree", "disagree", "rate_agree", "rate_disagree"}
        assert 0 <= out[concept]["disagree"]["trained"]["block2"] <= 1 or concept == "material"
    with pytest.raises(ValueError, match="flag each of the 60 rows"):
        probe_disagreement(acts, labels, 160, disagree[:10], ["material"])
    with pytest.raises(ValueError, match="both agreeing and disagreeing"):
        probe_disagreement(acts, labels, 160, torch.zeros(60, dtype=torch.bool), ["material"])


def test_attribution_needs_the_searched_boards(attributed):
    net, boards, rec, _ = attributed
    with pytest.raises(ValueError, match="record holds \\(2,\\) roots but 1 boards"):
        attribute_search(net, boards[:1], rec)
