"""The Leela-style net, the teacher's labels and the shipped checkpoints (held-out agreement with the teacher)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase

chess = pytest.importorskip("chess")

from agents.chess.net import LeelaConfig, LeelaNet, load_checkpoint, save_checkpoint  # noqa: E402
from agents.chess.positions import make_dataset, play_positions  # noqa: E402
from agents.chess.teacher import DRAW, LOSS, WIN, label_position, move_gain  # noqa: E402
from agents.chess.train import HOLDOUT_SEED, evaluate, train, without_history  # noqa: E402
from envs.chess.moves import POLICY_INDEX, legal_move_mask  # noqa: E402
from envs.chess.planes import board_to_planes  # noqa: E402

CHECKPOINTS = Path(__file__).resolve().parents[1] / "agents" / "chess" / "checkpoints"
FINAL = CHECKPOINTS / "leela_6x32_final.pt"
STEPS = ("step450", "step900", "step1350", "final")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def holdout():
    """1000 held-out positions: the first quarter of the set the training run reported on (seed 999)."""
    return make_dataset(1000, seed=HOLDOUT_SEED)


def test_module_paths_follow_lc0_names_and_tensordict_io():
    net = LeelaNet(blocks=2, filters=8, se_ratio=2, moves_left=True).eval()
    assert isinstance(net, TensorDictModuleBase)
    names = dict(net.named_modules())
    for path in [
        "inputconv",
        "block0.conv1",
        "block1.conv2",
        "block1.se",
        "policy1",
        "policy",
        "value",
        "ip2_val",
    ]:
        assert path in names
    assert net.in_keys == ["board"] and net.out_keys == ["policy", "wdl", "mlh"]
    td = TensorDict({"board": torch.rand(2, 3, 112, 8, 8)}, batch_size=[2, 3])
    out = net(td)
    assert (
        out["policy"].shape == (2, 3, 1858)
        and out["wdl"].shape == (2, 3, 3)
        and out["mlh"].shape == (2, 3, 1)
    )
    flat = net.heads(td["board"].reshape(6, 112, 8, 8))
    torch.testing.assert_close(flat["policy"], out["policy"].reshape(6, 1858))
    assert (out["mlh"] >= 0).all()


def test_block_outputs_are_hookable_activations():
    net = LeelaNet(blocks=3, filters=8, se_ratio=2).eval()
    seen = {}
    handles = [
        getattr(net, f"block{i}").register_forward_hook(lambda m, i, o, k=i: seen.__setitem__(k, o))
        for i in range(3)
    ]
    net.heads(torch.rand(4, 112, 8, 8))
    for h in handles:
        h.remove()
    assert sorted(seen) == [0, 1, 2] and all(
        v.shape == (4, 8, 8, 8) and (v >= 0).all() for v in seen.values()
    )


def test_checkpoint_round_trip(tmp_path):
    net = LeelaNet(LeelaConfig(blocks=1, filters=8, se_ratio=0, activation="mish")).eval()
    save_checkpoint(net, tmp_path / "n.pt", note="x")
    raw = torch.load(tmp_path / "n.pt", weights_only=True)
    assert set(raw) == {"config", "state_dict", "meta"}
    loaded = load_checkpoint(tmp_path / "n.pt")
    x = torch.rand(3, 112, 8, 8)
    assert torch.equal(net.heads(x)["policy"], loaded.heads(x)["policy"]) and loaded.meta == {"note": "x"}


def test_teacher_rules_on_hand_made_positions():
    mate = chess.Board("6k1/5ppp/8/8/8/8/8/R5K1 w - - 0 1")  # back-rank mate Ra8#
    lab = label_position(mate)
    assert (
        lab.rule == "mate" and lab.move == chess.Move.from_uci("a1a8") and lab.wdl == WIN and lab.mate_in_one
    )
    hanging = chess.Board("4k3/8/8/3q4/8/8/3R4/4K3 w - - 0 1")  # the rook takes an undefended queen
    lab = label_position(hanging)
    assert lab.rule == "capture" and lab.move == chess.Move.from_uci("d2d5") and lab.best_gain == 9
    assert lab.their_hanging == 9 and lab.wdl == WIN
    guarded = chess.Board("4k3/8/4p3/3n4/8/8/3Q4/4K3 w - - 0 1")  # Qxd5 exd5: a queen for a knight
    assert move_gain(guarded, chess.Move.from_uci("d2d5")) == 3 - 9
    defended = chess.Board("4k3/8/4p3/3n4/2P5/8/3Q4/4K3 w - - 0 1")  # c4 defends d5: loses queen for pawn
    assert move_gain(defended, chess.Move.from_uci("d2d5")) == 3 - (9 - 1)
    assert move_gain(defended, chess.Move.from_uci("c4d5")) == 3
    lab = label_position(chess.Board("4k3/8/8/8/8/8/4P3/4K3 b - - 0 1"))  # a pawn down, nothing hangs
    assert lab.material == -1 and lab.wdl == DRAW
    lab = label_position(chess.Board("4k3/8/8/8/8/8/3PPP2/2R1K3 b - - 0 1"))  # a rook and pawns down
    assert lab.wdl == LOSS and lab.mobility == len(
        list(chess.Board("4k3/8/8/8/8/8/3PPP2/2R1K3 b - - 0 1").legal_moves)
    )


def test_positions_are_seeded_and_labelled():
    a = make_dataset(40, seed=5)
    b = make_dataset(40, seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["words"].shape == (40, 112) and a["legal"].shape == (40, 233)
    for (board, lab), move in zip(play_positions(5, seed=5 * 100003), a["move"][:5]):  # the first chunk
        assert lab.move_index == move and lab.move in board.legal_moves
        assert POLICY_INDEX[move]  # a valid index


@pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing")
def test_shipped_net_agrees_with_the_teacher(holdout):
    net = load_checkpoint(FINAL)
    assert net.config.blocks == 6 and net.config.filters == 32
    metrics = evaluate(net, holdout)
    assert metrics["top1"] >= 0.5, metrics
    assert metrics["wdl_acc"] >= 0.9, metrics
    bare = evaluate(net, without_history(holdout))  # the same positions given as bare FENs
    assert bare["top1"] >= 0.5 and bare["wdl_acc"] >= 0.85, bare
    torch.manual_seed(0)
    control = evaluate(LeelaNet(net.config).eval(), holdout)  # same architecture, untrained
    assert control["top1"] < 0.45 and control["wdl_acc"] < 0.6, control


@pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing")
def test_intermediate_checkpoints_improve_over_training():
    metas = [load_checkpoint(CHECKPOINTS / f"leela_6x32_{s}.pt").meta for s in STEPS]
    assert [m["step"] for m in metas] == [450, 900, 1350, 1800]
    assert metas[0]["top1"] < metas[-1]["top1"] and metas[-1]["cpu_seconds"] < 600


@pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing")
def test_shipped_net_plays_the_teacher_capture():
    board = chess.Board("4k3/8/8/3q4/8/8/3R4/4K3 w - - 0 1")
    net = load_checkpoint(FINAL)  # a bare FEN: no history planes
    logits = net.heads(board_to_planes(board)[None])["policy"][0].masked_fill(
        ~legal_move_mask(board), -torch.inf
    )
    assert POLICY_INDEX[int(logits.argmax())] == "d2d5"


def test_training_loop_writes_snapshots(tmp_path):
    data = make_dataset(64, seed=11)
    net = LeelaNet(blocks=1, filters=8, se_ratio=2)
    history = train(net, data, data, steps=4, out_dir=tmp_path, batch=16, snapshots=1, progress=False)
    assert [h["step"] for h in history] == [2, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leela_1x8_final.pt", "leela_1x8_step2.pt"]
    assert not net.training


def test_chess_env_planes_use_the_history_fill():
    pytest.importorskip("torchrl")
    from envs.chess.env import LeelaPlanes, make_chess_env

    zeros = make_chess_env().reset()["board"]
    always = make_chess_env(fill="always").reset()["board"]  # ALWAYS fills behind the start position too
    assert torch.equal(zeros[:13], always[:13]) and not zeros[13:104].any()
    for t in range(1, 8):
        assert torch.equal(always[13 * t : 13 * t + 12], always[:12])
    with pytest.raises(ValueError, match="unknown history fill 'lc0'"):
        LeelaPlanes(fill="lc0")


@pytest.mark.skipif(not FINAL.exists(), reason="shipped checkpoint missing")
def test_net_plays_through_torchrl_chess_env():
    pytest.importorskip("torchrl")
    from envs.chess.env import make_chess_env, make_leela_policy

    net = load_checkpoint(FINAL)
    env = make_chess_env(include_san=True)
    seen = []
    handle = net.block3.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    try:
        rollout = env.rollout(8, make_leela_policy(net))
    finally:
        handle.remove()
    assert rollout["board"].shape == (8, 112, 8, 8) and len(seen) == 8
    board = chess.Board()
    for t in range(8):
        assert torch.equal(rollout["board"][t], board_to_planes(board))  # planes carry the game's history
        legal = legal_move_mask(board)
        greedy = int(rollout["policy"][t].masked_fill(~legal, -torch.inf).argmax())
        assert int(rollout["move_index"][t]) == greedy
        board.push_san(rollout["next", "san"][t])
        assert board.fen() == rollout["next", "fen"][t]


def test_collector_gathers_self_play_with_recorded_activations():
    """A TorchRL ``Collector`` plays the net (sampling, seeded) through ``ChessEnv`` with rlhook's ``Recorder``:
    every frame carries block 3's activations and the value head's conv output, equal to a separate forward
    on the frame's planes, and the moves are legal in the frame's FEN. ``ChessEnv`` frames are unbatched and
    the net adds a batch dim of its own, so each frame records ``(1, 32, 8, 8)``."""
    pytest.importorskip("torchrl")
    from torchrl.collectors import Collector

    from envs.chess.env import make_chess_env, make_leela_policy
    from rlhook import hook_count
    from rlhook.latent import ActivationCaching
    from rlhook.rl import Recorder

    net = load_checkpoint(FINAL)
    policy = Recorder(make_leela_policy(net, temperature=1.0, seed=0), ["module.0.block3", "module.0.value"])
    collector = Collector(make_chess_env(), policy, frames_per_batch=12, total_frames=24)
    batches = [b.clone() for b in collector]
    collector.shutdown()
    assert len(batches) == 2 and hook_count(net) == 0
    for batch in batches:
        block3, value = batch["rlhook", "module.0.block3"], batch["rlhook", "module.0.value"]
        assert block3.shape == (12, 1, 32, 8, 8) and value.shape == (12, 1, 32, 8, 8)
        block3, value = block3.squeeze(1), value.squeeze(1)
        with ActivationCaching(["block3", "value"]).prepare(net) as hooked:
            ref = hooked(TensorDict({"board": batch["board"]}, [12]))
        torch.testing.assert_close(block3, ref["cache", "block3"])
        torch.testing.assert_close(value, ref["cache", "value"])
        for t in range(12):
            board = chess.Board(batch["fen"][t])
            assert legal_move_mask(board)[int(batch["move_index"][t])]


def test_teacher_shortcuts_match_python_chess():
    """The teacher's cheap check filter and push-free gains agree with python-chess on many positions."""
    from agents.chess.teacher import PIECE_VALUES, _may_check, mating_moves

    for board, _ in play_positions(150, seed=21):
        brute_mates = []
        for move in board.legal_moves:
            gives_check = board.gives_check(move)
            assert _may_check(board, move) or not gives_check, (board.fen(), move)
            board.push(move)
            if board.is_checkmate():
                brute_mates.append(move)
            attackers = board.attackers(board.turn, move.to_square)
            defended = board.is_attacked_by(not board.turn, move.to_square)
            board.pop()
            piece = move.promotion or board.piece_type_at(move.from_square)
            gain = 1 if board.is_en_passant(move) else 0
            if board.is_capture(move) and not board.is_en_passant(move):
                gain = PIECE_VALUES[board.piece_type_at(move.to_square)]
            if move.promotion:
                gain += PIECE_VALUES[move.promotion] - 1
            if attackers and piece != chess.KING:
                cheapest = min(PIECE_VALUES[board.piece_type_at(s)] or 100 for s in attackers)
                gain -= max(0, PIECE_VALUES[piece] - cheapest) if defended else PIECE_VALUES[piece]
            assert move_gain(board, move) == gain, (board.fen(), move)
        assert set(mating_moves(board)) == set(brute_mates)
