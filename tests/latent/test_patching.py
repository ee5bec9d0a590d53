"""Activation and path patching against hand-written forwards with explicit interventions."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rlhook.latent import ActivationPatching, PathPatching
from rlhook.targets import ActionLogProb, CategoricalKL, LogitDiff, NormalKL
from tests.latent.helpers import check_lifecycle
from tests.models import MLP, two_input_td, two_input_td_module


def blocks(model: MLP, x: torch.Tensor, edit: dict | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference MLP forward; ``edit[i](h)`` replaces block ``i``'s output; returns (output, activations)."""
    acts, h = [], x
    for i, layer in enumerate(model.layers):
        h = torch.relu(layer[0](h))
        if edit and i in edit:
            h = edit[i](h)
        acts.append(h)
    return model.head(h), acts


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = MLP()
    x, xs = torch.randn(7, 16), torch.randn(7, 16)
    td = TensorDict({"input": x, ("patched", "input"): xs}, batch_size=[7])
    return model, td


def test_whole_module_units_positions(setup):
    model, td = setup
    x, xs = td["input"], td["patched", "input"]
    target = LogitDiff(0, 1)
    with torch.no_grad():
        _, src = blocks(model, xs)
        clean, _ = blocks(model, x)
        with ActivationPatching(["layers.0", "layers.2"], target).prepare(model) as hooked:
            out = hooked(td.clone())
        for i, name in ((0, "layers.0"), (2, "layers.2")):
            ref, _ = blocks(model, x, {i: lambda h, i=i: src[i]})
            torch.testing.assert_close(out["patch", name, "output"], ref)
            eff = (ref[:, 0] - ref[:, 1]) - (clean[:, 0] - clean[:, 1])
            torch.testing.assert_close(out["patch_effect", name], eff)
        torch.testing.assert_close(out["output"], clean)
        torch.testing.assert_close(out["patched", "output"], blocks(model, xs)[0])
        # the last block patched whole = the source output exactly
        torch.testing.assert_close(out["patch", "layers.2", "output"], out["patched", "output"])

        units = [1, 5, 7]
        with ActivationPatching("layers.1", target, units=units, normalize=True).prepare(model) as hooked:
            out = hooked(td.clone())

        def swap_units(h):
            h = h.clone()
            h[:, units] = src[1][:, units]
            return h

        ref, _ = blocks(model, x, {1: swap_units})
        src_out = blocks(model, xs)[0]
        eff = ((ref[:, 0] - ref[:, 1]) - (clean[:, 0] - clean[:, 1])) / (
            (src_out[:, 0] - src_out[:, 1]) - (clean[:, 0] - clean[:, 1])
        )
        torch.testing.assert_close(out["patch_effect", "layers.1"], eff)

        # joint patching of two modules and a user patch_fn (mean ablation of the source)
        pf = lambda clean_act, source_act: source_act.mean(0, keepdim=True).expand_as(clean_act)
        with ActivationPatching(["layers.0", "layers.1"], "output", patch_fn=pf, jointly=True).prepare(
            model
        ) as h:
            out = h(td.clone())
        ref, _ = blocks(
            model, x, {0: lambda h: src[0].mean(0).expand_as(h), 1: lambda h: src[1].mean(0).expand_as(h)}
        )
        torch.testing.assert_close(out["patch", "layers.0+layers.1", "output"], ref)
        torch.testing.assert_close(out["patch_effect", "layers.0+layers.1"], (ref - clean).sum(-1))


def test_positions_on_sequences():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, xs = torch.randn(5, 6, 4), torch.randn(5, 6, 4)
    td = TensorDict({"input": x, ("patched", "input"): xs}, batch_size=[5])
    with torch.no_grad():
        with ActivationPatching("1", "output", positions=[0, 3], units=[2, 4]).prepare(model) as hooked:
            out = hooked(td.clone())
        h, hs = torch.tanh(model[0](x)), torch.tanh(model[0](xs))
        h2 = h.clone()
        for p in (0, 3):
            for u in (2, 4):
                h2[:, p, u] = hs[:, p, u]
        torch.testing.assert_close(out["patch", "1", "output"], model[2](h2))


def test_td_module_divergences_and_logprob():
    module = two_input_td_module()
    torch.manual_seed(2)
    td = two_input_td((3, 4))
    td["patched", "obs"] = torch.randn(3, 4, 6)  # goal is shared between the runs
    td["action"] = torch.randint(0, 4, (3, 4))
    with torch.no_grad():
        with ActivationPatching(
            "obs_net", ActionLogProb(logits="logits"), divergence=CategoricalKL("logits")
        ).prepare(module) as hooked:
            out = hooked(td.clone())
        inner = module.module
        lp = lambda logits: torch.log_softmax(logits, -1).gather(-1, td["action"][..., None]).squeeze(-1)
        clean = inner.policy(inner.obs_net(td["obs"]) * inner.goal_net(td["goal"]))
        patched = inner.policy(inner.obs_net(td["patched", "obs"]) * inner.goal_net(td["goal"]))
        torch.testing.assert_close(out["patch_effect", "obs_net"], lp(patched) - lp(clean))
        kl = torch.distributions.kl_divergence(
            torch.distributions.Categorical(logits=clean), torch.distributions.Categorical(logits=patched)
        )
        torch.testing.assert_close(out["patch_divergence", "obs_net"], kl)
    assert out["patch_effect", "obs_net"].shape == (3, 4)


def test_normal_kl_matches_torch():
    torch.manual_seed(3)
    a = TensorDict({"loc": torch.randn(5, 2), "scale": torch.rand(5, 2) + 0.1}, [5])
    b = TensorDict({"loc": torch.randn(5, 2), "scale": torch.rand(5, 2) + 0.1}, [5])
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(a["loc"], a["scale"]), torch.distributions.Normal(b["loc"], b["scale"])
    ).sum(-1)
    torch.testing.assert_close(NormalKL()(a, b), ref)


class Residual(nn.Module):
    """h1 = f1(x); h2 = f2(h1); h3 = f3(h1 + h2); out = head(h1 + h2 + h3)."""

    def __init__(self) -> None:
        super().__init__()
        self.f1, self.f2, self.f3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h1 = torch.tanh(self.f1(x))
        h2 = torch.tanh(self.f2(h1))
        h3 = torch.tanh(self.f3(h1 + h2))
        return self.head(h1 + h2 + h3)


def test_path_patching_reference():
    torch.manual_seed(4)
    model = Residual()
    x, xs = torch.randn(6, 4), torch.randn(6, 4)
    td = TensorDict({"input": x, ("patched", "input"): xs}, batch_size=[6])
    m = model
    with torch.no_grad():
        with PathPatching("f1", "f3", "output", freeze=["f2"]).prepare(model) as hooked:
            out = hooked(td.clone())
        h1, h1s = torch.tanh(m.f1(x)), torch.tanh(m.f1(xs))
        h2 = torch.tanh(m.f2(h1))  # frozen at clean
        f3_patched = m.f3(h1s + h2)  # receiver sees the sender's source value through the direct path only
        ref = m.head(h1 + h2 + torch.tanh(f3_patched))
        torch.testing.assert_close(out["patch", "f1->f3", "output"], ref)
        clean = model(x)
        torch.testing.assert_close(out["patch_effect", "f1->f3"], (ref - clean).sum(-1))
        # without freezing, the receiver also sees the sender through f2
        with PathPatching("f1", "f3", "output").prepare(model) as hooked:
            out2 = hooked(td.clone())
        ref2 = m.head(h1 + h2 + torch.tanh(m.f3(h1s + torch.tanh(m.f2(h1s)))))
        torch.testing.assert_close(out2["patch", "f1->f3", "output"], ref2)
    assert not torch.allclose(ref, ref2)


def test_lifecycle_and_errors(setup):
    model, td = setup
    check_lifecycle(ActivationPatching(r"layers\.\d", "output", units=[0]), model, td)
    check_lifecycle(PathPatching("layers.0", "layers.2", "output", freeze="layers.1"), model, td)
    with pytest.raises(ValueError, match="target"):
        ActivationPatching("layers.0")
    with pytest.raises(KeyError, match="patched"):
        with ActivationPatching("layers.0", "output").prepare(model) as hooked:
            hooked(TensorDict({"input": torch.randn(2, 16)}, [2]))
    with pytest.raises(ValueError, match="freeze"):
        with PathPatching("layers.0", "layers.2", "output", freeze=["layers.0"]).prepare(model):
            pass


def test_sweep_over_positions_equals_single_patches():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    td = TensorDict({"input": torch.randn(5, 6, 4), ("patched", "input"): torch.randn(5, 6, 4)}, [5])
    target = lambda out: out["output"][..., 0].sum(-1)
    with torch.no_grad():
        with ActivationPatching("1", target, sweep="positions", units=[0, 3]).prepare(model) as h:
            out = h(td.clone())
        eff = out["patch_effect", "1"]
        assert eff.shape == (5, 6)
        for p in range(6):
            with ActivationPatching("1", target, positions=[p], units=[0, 3]).prepare(model) as h:
                single = h(td.clone())["patch_effect", "1"]
            torch.testing.assert_close(eff[:, p], single)
        with ActivationPatching(
            "1",
            target,
            sweep="units",
            divergence=lambda c, p: (c["output"] - p["output"]).abs().sum((-1, -2)),
        ).prepare(model) as h:
            out = h(td.clone())
        assert out["patch_effect", "1"].shape == (5, 8) and out["patch_divergence", "1"].shape == (5, 8)
    with pytest.raises(ValueError, match="sweep"):
        ActivationPatching("1", target, sweep="heads")


def test_gaussian_policy_kl_and_log_prob():
    """A TensorDict Gaussian policy (loc, scale heads): patching the trunk, KL and log-prob of the taken action."""
    from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential

    torch.manual_seed(8)
    trunk = nn.Sequential(nn.Linear(5, 16), nn.Tanh())
    heads = nn.Sequential(nn.Linear(16, 4), NormalParamExtractor())
    policy = TensorDictSequential(
        TensorDictModule(trunk, ["observation"], ["hidden"]),
        TensorDictModule(heads, ["hidden"], ["loc", "scale"]),
    )
    td = TensorDict(
        {
            "observation": torch.randn(6, 5),
            ("patched", "observation"): torch.randn(6, 5),
            "action": torch.randn(6, 2),
        },
        [6],
    )

    def log_prob(out):
        return torch.distributions.Normal(out["loc"], out["scale"]).log_prob(out["action"]).sum(-1)

    with torch.no_grad():
        with ActivationPatching("0.module.1", log_prob, divergence=NormalKL()).prepare(policy) as h:
            out = h(td.clone())
        dist = lambda obs: torch.distributions.Normal(*heads(trunk(obs)))
        clean, patched = dist(td["observation"]), dist(td["patched", "observation"])
    ref = patched.log_prob(td["action"]).sum(-1) - clean.log_prob(td["action"]).sum(-1)
    torch.testing.assert_close(out["patch_effect", "0.module.1"], ref)
    kl = torch.distributions.kl_divergence(clean, patched).sum(-1)
    torch.testing.assert_close(out["patch_divergence", "0.module.1"], kl)
