"""Recorder and ExplainBatch through TorchRL's Ray collector, on a local Ray cluster this module starts and stops.

Nothing in rlhook knows about Ray: the recorder pickles with the policy into each remote collector, writes its
activations into the rollout there, and the batch carries them back to the driver.
"""

import gc

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")
ray = pytest.importorskip("ray")

from torchrl.collectors.distributed import RayCollector  # noqa: E402

from agents.pendulum.nets import make_actor, make_critic  # noqa: E402
from envs.pendulum import make_env  # noqa: E402
from rlhook import hook_count  # noqa: E402
from rlhook.attribution import Saliency  # noqa: E402
from rlhook.rl import ExplainBatch, Recorder  # noqa: E402

pytestmark = pytest.mark.slow
LAYERS = r"module\.0\.module\.act\d"


def env_fns(n: int) -> list:
    return [lambda seed=seed: make_env(seed=seed) for seed in range(n)]


@pytest.fixture(scope="module")
def cluster():
    """A local two-CPU Ray cluster, shut down after the module whatever happens."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        # a collector whose construction raised is only half built; collecting it runs its shutdown, which
        # would start a new Ray instance if Ray were already down: collect first, then shut down
        gc.collect()
        ray.shutdown()


@pytest.fixture(scope="module")
def agent():
    torch.manual_seed(0)
    return make_actor(), make_critic()


def collector(policy, n: int = 2, **kwargs) -> RayCollector:
    return RayCollector(
        env_fns(n),
        policy,
        num_collectors=n,
        frames_per_batch=30,
        total_frames=120,
        remote_configs={"num_cpus": 1},
        sync=True,
        **kwargs,
    )


def test_recorded_activations_equal_a_separate_forward(cluster, agent):
    actor, critic = agent
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    rec = Recorder(actor, LAYERS)
    explain = ExplainBatch(Saliency(target="state_value", abs=False), critic)
    c = collector(rec, postproc=explain)
    try:
        batches, workers = [], []
        for batch in c:  # not list(c): RayCollector has no len() in TorchRL 0.14.1
            batches.append(batch)
            if sum(b.numel() for b in batches) == 120:  # the remote collectors stop once the loop ends
                workers = c.get_distant_attr("policy")  # each one's policy, pickled back
    finally:
        c.shutdown(shutdown_ray=False)
    assert sum(b.numel() for b in batches) == 120
    net = actor.module[0].module
    for batch in batches:
        assert batch["rlhook", "recorded"].all()
        obs = batch["observation"]
        h0 = net.act0(net.fc0(obs))
        torch.testing.assert_close(batch["rlhook", "module.0.module.act0"], h0)
        torch.testing.assert_close(batch["rlhook", "module.0.module.act1"], net.act1(net.fc1(h0)))
        grad = torch.func.vmap(torch.func.grad(lambda o: critic.module(o).sum()))(obs)
        torch.testing.assert_close(batch["rlhook", "attr", "observation"], grad)
    assert len(workers) == 2
    for remote in workers:  # the workers' copies: no hook left, same weights
        assert isinstance(remote, Recorder) and hook_count(remote.policy) == 0
        for k, v in remote.state_dict().items():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert hook_count(actor) == 0 and hook_count(critic) == 0


def test_a_worker_raising_surfaces_in_the_driver(cluster, agent):
    actor, _ = agent
    rec = Recorder(actor, "module.0.module.split")  # returns (loc, scale): the worker's forward raises
    with pytest.raises(Exception, match=r"split.*not a tensor") as info:
        c = collector(rec)
        try:
            next(iter(c))
        finally:
            c.shutdown(shutdown_ray=False)
    assert "split@0" in str(info.value)  # the advice travels with the error
    del info  # its traceback holds the half-built collector
