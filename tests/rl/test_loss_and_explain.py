"""Loss-term attributions against a hand-written autograd reference; batch attributions against per-step ones."""

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("mujoco")

from torchrl.collectors import Collector  # noqa: E402
from torchrl.objectives import ClipPPOLoss  # noqa: E402
from torchrl.objectives.value import GAE  # noqa: E402

from agents.pendulum.nets import make_actor, make_critic  # noqa: E402
from envs.pendulum import make_env  # noqa: E402
from rlhook import hook_count  # noqa: E402
from rlhook.attribution import Saliency  # noqa: E402
from rlhook.rl import ExplainBatch, LossAttribution  # noqa: E402

ACT = "actor_network.module.0.module.act1"
CRIT = "critic_network.module.act1"
TERMS = ["loss_objective", "loss_critic", "loss_entropy"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    actor, critic = make_actor(), make_critic()
    batch = next(iter(Collector(make_env(seed=1), actor, frames_per_batch=48, total_frames=48)))
    with torch.no_grad():
        GAE(gamma=0.99, lmbda=0.95, value_network=critic)(batch)
    return actor, critic, batch


def reference(loss, batch, actor, critic):
    """Raw torch: forward hooks written here, then autograd.grad per term."""
    acts = {}
    handles = [
        actor.module[0].module.act1.register_forward_hook(lambda m, a, o: acts.__setitem__(ACT, o)),
        critic.module.act1.register_forward_hook(lambda m, a, o: acts.__setitem__(CRIT, o)),
    ]
    b = batch.clone()
    obs = b["observation"].clone().requires_grad_(True)
    b["observation"] = obs
    torch.manual_seed(7)  # TanhNormal's entropy is a sampled estimate: same seed as the rlhook call
    out = loss(b)
    for h in handles:
        h.remove()
    ref = {}
    wrt = [obs, acts[ACT], acts[CRIT]]
    for t in TERMS:
        grads = torch.autograd.grad(out[t], wrt, retain_graph=True, allow_unused=True)
        ref[t] = {
            k: torch.zeros_like(w) if g is None else g
            for k, w, g in zip(["observation", ACT, CRIT], wrt, grads)
        }
    fc1 = torch.autograd.grad(
        out["loss_critic"], [critic.module.fc1.weight, critic.module.fc1.bias], retain_graph=True
    )
    return ref, torch.sqrt(sum((g**2).sum() for g in fc1))


def test_loss_terms_match_autograd_reference(setup):
    actor, critic, batch = setup
    loss = ClipPPOLoss(actor, critic)
    method = LossAttribution(TERMS, layers=[ACT, CRIT])
    with method.prepare(loss) as hooked:
        torch.manual_seed(7)
        td = hooked(batch.clone())
        norms = hooked.state.grad_norms
    ref, fc1_norm = reference(loss, batch, actor, critic)
    for t in TERMS:
        for k in ("observation", ACT, CRIT):
            torch.testing.assert_close(td["attr", t, k], ref[t][k])
    torch.testing.assert_close(norms["loss_critic", "critic_network.module.fc1"], fc1_norm)
    assert norms["loss_critic", "actor_network.module.0.module.fc0"] == 0
    torch.testing.assert_close(
        td["grad_norm", "loss_critic", "critic_network.module.fc1"], fc1_norm.expand(td.shape)
    )
    assert hook_count(actor) == hook_count(critic) == 0
    assert all(p.grad is None for p in loss.parameters())


def test_vmapped_value_network_is_refused(setup):
    actor, critic, batch = setup
    loss = ClipPPOLoss(actor, critic)  # no advantage in the batch: the loss runs GAE under vmap
    before = critic(batch.clone())["state_value"]
    with pytest.raises(RuntimeError, match="deactivate_vmap=True"):
        with LossAttribution(layers=[CRIT]).prepare(loss) as hooked:
            hooked(batch.exclude("advantage", "value_target", "state_value", ("next", "state_value")))
    assert hook_count(critic) == 0
    torch.testing.assert_close(critic(batch.clone())["state_value"], before)  # parameters swapped back


def test_batch_attribution_equals_per_step(setup):
    actor, critic, batch = setup
    explain = ExplainBatch(Saliency(target="state_value", abs=False), critic)
    out = explain(batch.clone())
    for t in (0, 17, 47):
        one = explain(batch[t : t + 1].clone())
        torch.testing.assert_close(
            out["rlhook", "attr", "observation"][t], one["rlhook", "attr", "observation"][0]
        )
    obs = batch["observation"][5].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(critic.module(obs).sum(), obs)
    torch.testing.assert_close(out["rlhook", "attr", "observation"][5], g)


def test_explain_as_collector_postproc(setup):
    actor, critic, _ = setup
    explain = ExplainBatch(Saliency(target="state_value"), critic)
    collector = Collector(
        make_env(seed=2, parallel=2), actor, frames_per_batch=20, total_frames=20, postproc=explain
    )
    batch = next(iter(collector))
    collector.shutdown()
    assert batch["rlhook", "attr", "observation"].shape == (2, 10, 9)
    assert (batch["rlhook", "attr", "observation"] >= 0).all()


class _Q(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.act0, self.out = torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.out(self.act0(self.fc0(torch.cat([obs, action], -1))))


def test_sac_ensemble_vmapped_refused_and_unrolled_calls_keyed(setup):
    from torchrl.modules import ValueOperator
    from torchrl.objectives import SACLoss

    actor, _, batch = setup
    q = ValueOperator(_Q(), in_keys=["observation", "action"])
    with pytest.raises(RuntimeError, match="ran under torch.vmap"):
        with LossAttribution(["loss_qvalue"], layers=["qvalue_network.module.act0"]).prepare(
            SACLoss(actor, q, num_qvalue_nets=2)
        ) as hooked:
            hooked(batch.clone())
    loss = SACLoss(actor, q, num_qvalue_nets=2, deactivate_vmap=True)
    with LossAttribution(["loss_qvalue"], layers=["qvalue_network.module.act0"]).prepare(loss) as hooked:
        td = hooked(batch.clone())
    calls = [k for k in td["attr", "loss_qvalue"].keys() if k.startswith("qvalue_network.module.act0#")]
    assert len(calls) >= 2  # one key per ensemble member call, never one silently merged map
    assert any(td["attr", "loss_qvalue", k].abs().sum() > 0 for k in calls)
    assert hook_count(q) == 0


def test_two_explain_batches_do_not_overwrite_each_other(setup):
    actor, critic, batch = setup
    b = ExplainBatch(Saliency(target="state_value", abs=False), critic)(batch.clone())
    with pytest.raises(ValueError, match="its own prefix"):
        ExplainBatch(Saliency(target="state_value"), critic)(b)
    both = ExplainBatch(Saliency(target="state_value"), critic, prefix=("rlhook", "abs"))(b)
    torch.testing.assert_close(
        both["rlhook", "abs", "attr", "observation"], b["rlhook", "attr", "observation"].abs()
    )


def test_target_network_calls_are_named_by_their_parameters():
    """DQN runs one Q-network module twice, with its own and its target's parameters swapped in: the two
    calls get keys named after those parameter sets, and only the online call carries gradient."""
    from tensordict import TensorDict
    from tensordict.nn import TensorDictModule
    from torchrl.data import OneHot
    from torchrl.modules import QValueActor
    from torchrl.objectives import DQNLoss

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    q = QValueActor(
        TensorDictModule(net, ["observation"], ["action_value"]), in_keys=["observation"], spec=OneHot(2)
    )
    loss = DQNLoss(q, action_space="one-hot", delay_value=True)
    n = 6
    batch = TensorDict(
        {
            "observation": torch.randn(n, 4),
            "action": torch.nn.functional.one_hot(torch.randint(0, 2, (n,)), 2),
            "next": {
                "observation": torch.randn(n, 4),
                "reward": torch.randn(n, 1),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        [n],
    )
    layer = "value_network.module.0.module.1"
    hooks_before = hook_count(loss)  # TorchRL's own (a state-dict hook of the loss)
    with LossAttribution(["loss"], layers=[layer]).prepare(loss) as hooked:
        td = hooked(batch)
    keys = sorted(k for k in td["attr", "loss"].keys() if k.startswith(layer))
    assert keys == [f"{layer}#target_value_network", f"{layer}#value_network"]
    assert td["attr", "loss", f"{layer}#target_value_network"].abs().sum() == 0  # computed without grad
    online = td["attr", "loss", f"{layer}#value_network"]
    h = torch.relu(net[0](batch["observation"])).requires_grad_(True)
    qv = net[2](h)  # reference: DQN's default loss by hand (squared error to the bootstrapped target)
    with torch.no_grad():
        target = (
            batch["next", "reward"][:, 0]
            + 0.99 * net[2](torch.relu(net[0](batch["next", "observation"]))).max(-1).values
        )
    pred = (qv * batch["action"]).sum(-1)
    (g,) = torch.autograd.grad((pred - target).pow(2).mean(), h)
    torch.testing.assert_close(online, g)
    assert hook_count(loss) == hooks_before and hook_count(net) == 0
