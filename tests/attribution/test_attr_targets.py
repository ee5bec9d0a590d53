"""RL target presets on real TorchRL actors (TanhNormal, Categorical, masked Categorical) and critics."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from rlhook.attribution import Saliency
from rlhook.targets import (
    WDL,
    ActionLogProb,
    ActionValue,
    DistParams,
    Entropy,
    KLToReference,
    StateValue,
    evaluate,
    policy_params,
)
from tests.attribution.attr_cases import tanh_actor

DT = torch.float64


def _obs_td(batch: int = 5, seed: int = 0) -> TensorDict:
    gen = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(batch, 4, generator=gen, dtype=DT),
            "action": torch.rand(batch, 2, generator=gen, dtype=DT) * 1.6 - 0.8,
        },
        [batch],
    )


def _grad(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


def _saliency(target, model, td: TensorDict, **kw) -> TensorDict:
    with Saliency(target, abs=False, **kw).prepare(model) as hooked:
        return hooked(td.clone())["attr"]


def test_tanh_normal_action_log_prob() -> None:
    from torchrl.modules import TanhNormal

    actor = tanh_actor()
    td = _obs_td()
    net = actor.module[0].module

    def log_prob(obs):
        loc, scale = net(obs)
        return TanhNormal(loc, scale, low=-1.0, high=1.0).log_prob(td["action"])

    target = ActionLogProb(actor)
    out = policy_params(actor)(td.clone())
    torch.testing.assert_close(evaluate(target, out)[None], log_prob(td["observation"]))
    attr = _saliency(target, policy_params(actor), td)["observation"]
    torch.testing.assert_close(attr, _grad(log_prob, td["observation"]))


def test_log_prob_explains_the_batch_action_also_on_the_full_actor() -> None:
    """The full actor samples and writes a new action; the target still reads the one the batch held."""
    actor = tanh_actor()
    td = _obs_td()
    full = _saliency(ActionLogProb(actor), actor, td)["observation"]
    torch.testing.assert_close(full, _saliency(ActionLogProb(actor), policy_params(actor), td)["observation"])
    with pytest.raises(ValueError, match="the batch gave none"):
        _saliency(ActionLogProb(actor), actor, td.exclude("action"))


def test_action_value_on_a_q_value_actor_explains_the_taken_action() -> None:
    """A QValueActor writes its greedy action over the batch's: on exploration steps (taken != greedy) the map
    must still be that of Q(s, taken); greedy=True asks for max_a Q(s, a)."""
    from torchrl.modules import QValueActor

    torch.manual_seed(8)
    net = nn.Linear(4, 3).to(DT)
    actor = QValueActor(net, in_keys=["observation"], action_space="categorical")
    td = _obs_td()
    greedy = net(td["observation"]).argmax(-1)
    taken = (greedy + torch.tensor([0, 1, 2, 1, 0])) % 3  # three exploration steps
    td["action"] = taken
    got = _saliency(ActionValue(), actor, td)["observation"]
    torch.testing.assert_close(
        got, _grad(lambda o: net(o).gather(-1, taken[:, None]).squeeze(-1), td["observation"])
    )
    best = _saliency(ActionValue(greedy=True), actor, td)["observation"]
    torch.testing.assert_close(best, _grad(lambda o: net(o).max(-1).values, td["observation"]))
    assert not torch.allclose(got, best)


def test_log_prob_key_reads_the_actors_sample_log_prob() -> None:
    from torchrl.modules import ProbabilisticActor, TanhNormal

    base = tanh_actor()
    actor = ProbabilisticActor(
        base.module[0],
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
        return_log_prob=True,
    )
    td = _obs_td()
    attr = _saliency(ActionLogProb(log_prob_key="action_log_prob"), actor, td)["observation"]
    assert attr.shape == (5, 4) and attr.abs().sum() > 0


def _categorical_actor(masked: bool):
    from torchrl.modules import MaskedCategorical, ProbabilisticActor

    torch.manual_seed(5)
    net = TensorDictModule(
        nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT), ["observation"], ["logits"]
    )
    if masked:
        return net, ProbabilisticActor(
            net, in_keys={"logits": "logits", "mask": "action_mask"}, distribution_class=MaskedCategorical
        )
    return net, ProbabilisticActor(
        net, in_keys=["logits"], distribution_class=torch.distributions.Categorical
    )


@pytest.mark.parametrize("masked", [False, True])
def test_categorical_action_log_prob_and_entropy(masked: bool) -> None:
    net, actor = _categorical_actor(masked)
    td = _obs_td()
    td["action"] = torch.tensor([0, 1, 2, 0, 1])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    if masked:
        td["action_mask"] = mask
    logits_fn = net.module

    def log_prob(obs):
        logits = logits_fn(obs)
        if masked:
            logits = logits.masked_fill(~mask, float("-inf"))
        return logits.log_softmax(-1).gather(-1, td["action"][:, None]).squeeze(-1)

    attr = _saliency(ActionLogProb(actor), net, td)["observation"]
    torch.testing.assert_close(attr, _grad(log_prob, td["observation"]))

    def entropy(obs):
        logits = logits_fn(obs)
        if masked:
            logits = logits.masked_fill(~mask, -1e30)
        p = logits.softmax(-1)
        return -(p * logits.log_softmax(-1)).where(p > 0, torch.zeros((), dtype=DT)).sum(-1)

    out = net(td.clone())
    torch.testing.assert_close(evaluate(Entropy(actor), out)[None], entropy(td["observation"]))
    attr = _saliency(Entropy(actor), net, td)["observation"]
    torch.testing.assert_close(attr, _grad(entropy, td["observation"]), rtol=1e-6, atol=1e-9)


def test_dist_params_give_one_map_each() -> None:
    actor = tanh_actor()
    td = _obs_td()
    maps = _saliency(DistParams(), policy_params(actor), td)
    torch.testing.assert_close(
        maps["loc", "observation"], _saliency("loc", policy_params(actor), td)["observation"]
    )
    torch.testing.assert_close(
        maps["scale", "observation"], _saliency("scale", policy_params(actor), td)["observation"]
    )
    one = _saliency(DistParams(["loc"], index=1), policy_params(actor), td)
    torch.testing.assert_close(
        one["loc", "observation"], _grad(lambda o: actor.module[0].module(o)[0][:, 1], td["observation"])
    )


def test_tanh_normal_entropy_is_a_seeded_monte_carlo_estimate() -> None:
    actor = tanh_actor()
    params = policy_params(actor)
    td = _obs_td()
    a = _saliency(Entropy(actor, n_samples=32, seed=3), params, td)["observation"]
    b = _saliency(Entropy(actor, n_samples=32, seed=3), params, td)["observation"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.abs().sum() > 0


def test_state_value_and_action_values() -> None:
    from torchrl.modules import ValueOperator

    torch.manual_seed(6)
    critic = ValueOperator(
        nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(DT), in_keys=["observation"]
    )
    td = _obs_td()
    torch.testing.assert_close(
        _saliency(StateValue(), critic, td)["observation"],
        _grad(lambda o: critic.module(o)[:, 0], td["observation"]),
    )
    # discrete Q(s, .): the taken action's entry, from indices or one-hot
    qnet = TensorDictModule(nn.Linear(4, 3).to(DT), ["observation"], ["action_value"])
    idx = torch.tensor([2, 0, 1, 1, 0])
    expected = _grad(lambda o: qnet.module(o).gather(-1, idx[:, None]).squeeze(-1), td["observation"])
    td["action"] = idx
    torch.testing.assert_close(_saliency(ActionValue(), qnet, td)["observation"], expected)
    td["action"] = torch.nn.functional.one_hot(idx, 3)
    torch.testing.assert_close(_saliency(ActionValue(), qnet, td)["observation"], expected)
    # continuous Q(s, a): attribute to the observation and to the action
    qsa = ValueOperator(QSA().to(DT), in_keys=["observation", "action"], out_keys=["state_action_value"])
    td = _obs_td()
    maps = _saliency(ActionValue("state_action_value"), qsa, td)
    cat = torch.cat([td["observation"], td["action"]], -1)
    g = _grad(lambda v: qsa.module.net(v)[:, 0], cat)
    torch.testing.assert_close(maps["observation"], g[:, :4])
    torch.testing.assert_close(maps["action"], g[:, 4:])


class QSA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], -1))


def test_kl_to_reference() -> None:
    actor = tanh_actor()
    params = policy_params(actor)
    td = _obs_td()
    frozen = copy.deepcopy(params)
    out = params(td.clone())
    kl = evaluate(KLToReference(frozen, actor), out)[None]
    torch.testing.assert_close(kl, torch.zeros(5, dtype=DT), rtol=0, atol=1e-12)
    with torch.no_grad():
        for p in frozen.parameters():
            p.add_(0.1)
    # a Normal policy with the reference parameters stored in the TensorDict: the closed form
    ref = frozen(td.clone())
    td_ref = td.clone()
    td_ref["reference", "loc"], td_ref["reference", "scale"] = ref["loc"], ref["scale"]
    target = KLToReference("reference", dist_class=torch.distributions.Normal, dist_keys=["loc", "scale"])
    net = actor.module[0].module

    def kl_fn(obs):
        loc, scale = net(obs)
        q = torch.distributions.Normal(ref["loc"].detach(), ref["scale"].detach())
        return torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale), q).sum(-1)

    attr = _saliency(target, params, td_ref)["observation"]
    torch.testing.assert_close(attr, _grad(kl_fn, td["observation"]))
    # the same through a reference module and the TanhNormal actor (its KL is registered for equal transforms)
    attr2 = _saliency(KLToReference(frozen, actor), params, td)["observation"]
    torch.testing.assert_close(attr2, attr)


def test_wdl_outcomes() -> None:
    torch.manual_seed(7)
    model = TensorDictModule(nn.Linear(5, 3).to(DT), ["board"], ["wdl"])
    td = TensorDict({"board": torch.randn(4, 5, dtype=DT)}, [4])
    maps = _saliency(WDL(), model, td)
    total = maps["W", "board"] + maps["D", "board"] + maps["L", "board"]
    torch.testing.assert_close(total, torch.zeros_like(total), rtol=0, atol=1e-12)  # probabilities sum to 1
    score = _saliency(WDL("score"), model, td)["board"]
    torch.testing.assert_close(score, maps["W", "board"] - maps["L", "board"])
    logit = _saliency(WDL("D", kind="logit"), model, td)["board"]
    torch.testing.assert_close(logit, model.module.weight[1].expand(4, 5))
    with pytest.raises(ValueError, match="WDL outcomes"):
        WDL("X")


def test_non_differentiable_targets_are_clear_errors() -> None:
    net, actor = _categorical_actor(False)
    td = _obs_td()
    td["action"] = torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(TypeError, match="not a floating tensor"):
        _saliency(lambda out: out["action"], actor, td)
    with pytest.raises(RuntimeError, match="does not depend on the attributed inputs"):
        _saliency(lambda out: out["logits"].detach().sum(-1), net, td)
    with pytest.raises(ValueError, match="either actor"):
        ActionLogProb()
