"""Patching a QValueActor explains the action the batch holds, not the greedy one the actor recomputes."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

pytest.importorskip("torchrl")

from torchrl.data import OneHot  # noqa: E402
from torchrl.modules import QValueActor  # noqa: E402

from rlhook.latent import ActivationPatching, PathPatching  # noqa: E402
from rlhook.targets import ActionValue  # noqa: E402


def qactor():
    torch.manual_seed(0)
    net = TensorDictModule(
        torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)),
        in_keys=["observation"],
        out_keys=["action_value"],
    )
    return QValueActor(net, in_keys=["observation"], spec=OneHot(3)).double()


def batch(actor):
    """Observations, source observations, and the actions *least* favoured by the actor (never greedy)."""
    obs, src = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    q = actor.module[0](TensorDict({"observation": obs}, [8]))["action_value"]
    taken = torch.nn.functional.one_hot(q.argmin(-1), 3)
    return TensorDict({"observation": obs, ("patched", "observation"): src, "action": taken}, [8]), taken


def q_of(actor, obs, hidden=None):
    net = actor.module[0].module
    h = torch.relu(net[0](obs)) if hidden is None else hidden
    return net[2](h), h


@pytest.mark.parametrize("method", ["activation", "path"])
def test_patching_effects_use_the_taken_action(method):
    actor = qactor()
    td, taken = batch(actor)
    if method == "activation":
        patching = ActivationPatching("module.0.module.1", ActionValue())
    else:
        patching = PathPatching("module.0.module.1", "module.0.module.2", target=ActionValue())
    with patching.prepare(actor) as hooked:
        out = hooked(td.clone())
    name = "module.0.module.1" if method == "activation" else "module.0.module.1->module.0.module.2"
    clean, _ = q_of(actor, td["observation"])
    _, h_src = q_of(actor, td["patched", "observation"])
    patched, _ = q_of(actor, td["observation"], hidden=h_src)
    want = ((patched - clean) * taken).sum(-1)  # Q(s, a_taken) patched minus clean
    greedy = patched.max(-1).values - clean.max(-1).values
    assert not torch.allclose(want, greedy)  # the test can tell the two apart
    torch.testing.assert_close(out["patch_effect", name], want)
