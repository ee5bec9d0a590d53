"""The deterministic PUCT search: its record checked against python-chess replays and plain net forwards."""

from pathlib import Path

import pytest
import torch

chess = pytest.importorskip("chess")

from agents.chess.net import load_checkpoint  # noqa: E402
from agents.chess.search import SearchConfig, net_value, search, search_paths, terminal_value  # noqa: E402
from envs.chess.moves import legal_move_indices, legal_move_mask, move_to_index  # noqa: E402
from envs.chess.planes import board_to_planes  # noqa: E402

FINAL = Path(__file__).resolve().parents[1] / "agents" / "chess" / "checkpoints" / "leela_6x32_final.pt"
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing"),
]

FENS = [
    "r1bqkbnr/pppp1ppp/2n5/4p3/3QP3/8/PPP2PPP/RNB1KBNR b KQkq - 0 3",  # black can take a hanging queen
    "6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 0 1",  # back-rank mate in one: Ra8#
    "r3k2r/pppq1ppp/2n1bn2/3pp3/3PP3/2N1BN2/PPPQ1PPP/R3K2R w KQkq - 0 8",  # quiet, castling both ways
]


@pytest.fixture(scope="module")
def net():
    return load_checkpoint(FINAL)


@pytest.fixture(scope="module")
def record(net):
    boards = [chess.Board(f) for f in FENS]
    boards[2].push_uci("a2a3")  # a root with history
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the function-scoped one_thread
    try:
        return boards, search(net, boards, SearchConfig(simulations=40))
    finally:
        torch.set_num_threads(threads)


def test_record_replays_on_the_board(net, record):
    boards, rec = record
    sr = rec["search"]
    assert sr.batch_size == torch.Size([3]) and sr["sim"].batch_size == torch.Size([3, 40])
    assert torch.equal(sr["visits"].sum(-1), torch.full((3,), 40.0))
    for i, board in enumerate(boards):
        fen = board.fen()
        paths = search_paths(board, rec, i)
        sim = sr["sim"][i]
        leaves, boards_at = [], []
        for s, moves in enumerate(paths):
            leaf = board.copy()
            for m in moves:
                leaf.push(m)
            assert move_to_index(board, moves[0]) == int(sim["first"][s]) and len(moves) == int(
                sim["depth"][s]
            )
            assert bool(sim["terminal"][s]) == (terminal_value(leaf) is not None)
            if sim["terminal"][s]:
                assert float(sim["value"][s]) == terminal_value(leaf)
            leaves.append(board_to_planes(leaf))
            boards_at.append(leaf)
        leaves = torch.stack(leaves)
        assert torch.equal(sim["leaf"].float(), leaves)  # the stored planes are the replayed leaves'
        with torch.no_grad():
            values = net_value(net.heads(leaves)["wdl"])
        live = ~sim["terminal"]
        torch.testing.assert_close(sim["value"][live], values[live], atol=1e-5, rtol=0)
        depth = sim["depth"].double()
        torch.testing.assert_close(sim["backed"].double(), (-1.0) ** depth * sim["value"].double())
        for a in torch.nonzero(sr["visits"][i]).flatten().tolist():
            through = sim["first"] == a
            assert int(through.sum()) == int(sr["visits"][i, a])
            torch.testing.assert_close(sr["q"][i, a], sim["backed"][through].mean(), atol=1e-6, rtol=0)
        assert board.fen() == fen  # boards are left as they were
        legal = legal_move_mask(board)
        assert legal[sr["move"][i]] and legal[sr["net_move"][i]]
        assert not sr["prior"][i][~legal].any()
        torch.testing.assert_close(sr["prior"][i].sum(), torch.tensor(1.0))


def test_deterministic_and_batch_independent(net, record):
    boards, rec = record
    again = search(net, boards[1:2], SearchConfig(simulations=40))
    for key in ("visits", "move"):
        assert torch.equal(again["search", key][0], rec["search", key][1]), key
    for key in ("q", "prior"):  # a batch of one rounds its convolutions differently in the last bits
        torch.testing.assert_close(again["search", key][0], rec["search", key][1], atol=1e-5, rtol=0)
    assert torch.equal(again["search", "sim", "path"][0], rec["search", "sim", "path"][1])


def test_search_plays_the_mate_and_the_queen_capture(record):
    boards, rec = record
    sr = rec["search"]
    mate = legal_move_indices(boards[1])[int(sr["move"][1])]
    after = boards[1].copy()
    after.push(mate)
    assert after.is_checkmate()
    capture = legal_move_indices(boards[0])[int(sr["move"][0])]
    assert boards[0].piece_at(capture.to_square) == chess.Piece(chess.QUEEN, chess.WHITE)
    assert float(sr["q"][1, sr["move"][1]]) == 1.0  # every visit through the mate scores a win


def test_terminal_convention_python_chess_game_over_keeps_its_moves():
    fivefold = chess.Board()
    for _ in range(4):
        for uci in ("g1f3", "g8f6", "f3g1", "f6g8"):
            fivefold.push_uci(uci)
    cases = {
        "insufficient material": chess.Board("8/8/4k3/8/8/3NK3/8/8 w - - 0 1"),
        "75-move rule": chess.Board("8/8/4k3/8/3r4/3RK3/8/8 w - - 150 200"),
        "fivefold repetition": fivefold,
    }
    for name, board in cases.items():
        assert board.is_game_over(), name
        moves = list(board.legal_moves)
        assert moves and int(legal_move_mask(board).sum()) == len(moves), name
        assert terminal_value(board) == 0.0, name
        with pytest.raises(ValueError, match="finished game"):
            search(None, [board])
    assert terminal_value(chess.Board("6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 0 1")) is None
    assert terminal_value(chess.Board("R5k1/5ppp/8/8/8/8/5PPP/6K1 b - - 1 1")) == -1.0
    assert terminal_value(chess.Board("7k/5Q2/6K1/8/8/8/8/8 b - - 0 1")) == 0.0  # stalemate


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="simulations and max_depth must be >= 1"):
        SearchConfig(simulations=0)
    with pytest.raises(ValueError, match="c_puct must be positive"):
        SearchConfig(c_puct=0)
    with pytest.raises(ValueError, match="at least one root"):
        search(None, [])


def test_a_net_read_from_an_lc0_file_searches_with_lc0s_fill(net):
    from agents.chess.lc0 import decode_net, encode_net

    lc0_net = decode_net(encode_net(net))
    board = chess.Board(FENS[0])  # a bare FEN: the fill decides the older history planes
    rec = search(lc0_net, [board], SearchConfig(simulations=6))
    sim = rec["search", "sim"][0]
    for s, moves in enumerate(search_paths(board, rec)):
        leaf = board.copy()
        for m in moves:
            leaf.push(m)
        assert torch.equal(sim["leaf"][s].float(), board_to_planes(leaf, "fen_only"))
    assert sim["leaf"][:, 13 * 7].any()  # the seventh-oldest step holds the repeated root
