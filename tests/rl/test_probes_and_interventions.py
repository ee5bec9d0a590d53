"""Training-time probes with their controls; ablation against a hand-written forward; paired rollouts."""

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")

from torchrl.collectors import Collector  # noqa: E402

from agents.pendulum.nets import make_actor  # noqa: E402
from envs.pendulum import make_env  # noqa: E402
from rlhook import hook_count  # noqa: E402
from rlhook.latent import SteeringVectors  # noqa: E402
from rlhook.rl import Ablation, TrainingProbes, paired_rollouts  # noqa: E402

ACT1 = "module.0.module.act1"


@pytest.fixture(scope="module")
def actor_and_batch():
    torch.manual_seed(0)
    actor = make_actor()
    batch = next(iter(Collector(make_env(seed=3), actor, frames_per_batch=400, total_frames=400)))
    return actor, batch


def test_probes_recover_a_planted_feature_and_report_controls(actor_and_batch, tmp_path):
    actor, batch = actor_and_batch
    net = actor.module[0].module
    direction = torch.randn(256, generator=torch.Generator().manual_seed(1))

    def labels(b):
        with torch.no_grad():
            h = net.act1(net.fc1(net.act0(net.fc0(b["observation"]))))
        return {
            "planted": h @ direction,
            "noise": torch.randn(b.batch_size, generator=torch.Generator().manual_seed(2)),
        }

    probes = TrainingProbes(actor, [r"module\.0\.module\.act\d"], labels, every=2, log_dir=tmp_path)
    for i in range(3):  # calls 1 and 3 probe
        probes(batch, frames=400 * (i + 1))
    assert sorted({r["frames"] for r in probes.history}) == [400, 1200]
    rows = {(r["layer"], r["quantity"]): r for r in probes.table()}
    planted = rows[ACT1, "planted"]
    assert planted["trained"] > 0.99  # linear in that layer by construction
    assert planted["shuffled"] < 0.1 and rows[ACT1, "noise"]["trained"] < 0.1
    assert planted["selectivity"] == planted["trained"] - max(planted["random_init"], planted["raw_obs"])
    csvs = list(tmp_path.rglob("*.csv"))
    assert any("planted" in str(p) for p in csvs), csvs
    png = probes.plot(tmp_path / "curves.png")
    assert png.stat().st_size > 10_000
    assert hook_count(actor) == 0


def test_probes_read_recorded_activations_and_skip_unrecorded_frames(actor_and_batch):
    """With a Recorder's keys in the batch the probes use them (here planted: one unit equals the label, which
    the real layer does not give), and frames marked unrecorded are left out."""
    actor, batch = actor_and_batch
    b = batch.clone()
    n = b.batch_size.numel()
    label = torch.randn(b.batch_size, generator=torch.Generator().manual_seed(5))
    planted = 0.01 * torch.randn(*b.batch_size, 256, generator=torch.Generator().manual_seed(6))
    planted[..., 0] = (
        label  # with the unrecorded zero rows kept, a quarter of the labels would be unexplained
    )
    recorded = torch.ones(b.batch_size, dtype=torch.bool)
    recorded.view(-1)[: n // 4] = False  # as random exploration frames: zeros, not written by the policy
    planted.view(n, 256)[: n // 4] = 0
    b["rlhook", ACT1] = planted
    b["rlhook", "recorded"] = recorded
    probes = TrainingProbes(actor, [ACT1], lambda x: {"q": label})
    rows = {r["model"]: r["r2"] for r in probes.probe(b, frames=1)}
    assert rows["trained"] > 0.999 and rows["random_init"] < 0.9


def test_ablation_matches_manual_forward(actor_and_batch):
    actor, batch = actor_and_batch
    net = actor.module[0].module
    obs = batch["observation"][:20]
    with Ablation({ACT1: [0, 5, 7]}).prepare(actor) as hooked:
        td = hooked(batch[:20].select("observation").clone())
    h = net.act1(net.fc1(net.act0(net.fc0(obs))))
    h[:, [0, 5, 7]] = 0
    loc, scale = net.split(net.out(h))
    torch.testing.assert_close(td["loc"], loc)
    assert hook_count(actor) == 0


def test_paired_rollouts_detect_a_change(actor_and_batch):
    actor, _ = actor_and_batch
    v = torch.ones(256)
    effect = paired_rollouts(
        lambda seed: make_env(seed=seed),
        actor,
        SteeringVectors({ACT1: v}, scale=3.0),
        seeds=[0, 1],
        max_steps=60,
    )
    assert effect["seeds"] == [0, 1] and len(effect["return_base"]) == 2
    assert effect["action_shift"] > 1e-3
    same = paired_rollouts(
        lambda seed: make_env(seed=seed),
        actor,
        SteeringVectors({ACT1: v}, scale=0.0),
        seeds=[0, 1],
        max_steps=60,
    )
    assert same["return_diff_mean"] == 0 and same["action_shift"] < 1e-6  # paired seeds: identical episodes
    assert hook_count(actor) == 0


def test_probes_as_a_torchrl_trainer_op():
    from torchrl.objectives import ClipPPOLoss
    from torchrl.trainers import Trainer

    from agents.pendulum.nets import make_critic

    actor = make_actor()  # trained here: not the shared fixture
    loss = ClipPPOLoss(actor, make_critic())
    loss.make_value_estimator(deactivate_vmap=True)
    collector = Collector(make_env(seed=0), actor, frames_per_batch=100, total_frames=200)
    trainer = Trainer(
        collector=collector,
        total_frames=200,
        frame_skip=1,
        optim_steps_per_batch=1,
        loss_module=loss,
        optimizer=torch.optim.Adam(loss.parameters(), 1e-5),
        progress_bar=False,
    )
    probes = TrainingProbes(actor, ACT1, lambda b: {"tip_y": b["physics", "tip_y"]})
    trainer.register_op("batch_process", probes.trainer_op())
    trainer.train()
    assert sorted({r["frames"] for r in probes.history}) == [100, 200]
    assert {r["model"] for r in probes.history} == {"trained", "random_init", "raw_obs", "shuffled"}


@pytest.mark.parametrize("kind", ["csv", "tensorboard"])
def test_every_logged_scalar_equals_the_history(actor_and_batch, tmp_path, kind):
    """TorchRL's CSV and TensorBoard loggers receive every score in ``history``, at its frame count."""
    from torchrl.record.loggers import CSVLogger, TensorboardLogger

    if kind == "tensorboard":
        pytest.importorskip("tensorboard")
        logger = TensorboardLogger(exp_name="probes", log_dir=str(tmp_path))
    else:
        logger = CSVLogger(exp_name="probes", log_dir=str(tmp_path))
    actor, batch = actor_and_batch
    probes = TrainingProbes(actor, ACT1, lambda b: {"tip_y": b["physics", "tip_y"]}, logger=logger)
    probes(batch, frames=400)
    probes(batch[:200], frames=600)
    want = {
        (f"probe/{r['model']}/{r['quantity']}/{r['layer']}", r["frames"]): r["r2"] for r in probes.history
    }
    assert len(want) == 8  # 4 models x 2 probe calls
    got = {}
    if kind == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        logger.experiment.flush()
        (folder,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
        events = EventAccumulator(str(folder)).Reload()
        for tag in events.Tags()["scalars"]:
            got.update({(tag, e.step): e.value for e in events.Scalars(tag)})
    else:
        for path in tmp_path.rglob("*.csv"):  # .../scalars/probe/<model>/<quantity>/<layer>.csv
            tag = path.with_suffix("").as_posix().split("/scalars/", 1)[1]
            for line in path.read_text().splitlines():
                step, value = line.split(",")
                got[tag, int(float(step))] = float(value)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
