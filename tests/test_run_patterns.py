"""Core behaviours HF models need, checked on plain torch models: patterns that select modules which never
run, elements naming a module's input, and activations not shaped like the batch."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from rlhook import HookedModule
from rlhook.hooks import hook_count
from rlhook.latent import ActivationCaching, ActivationPatching
from rlhook.proxy import ProxyError
from rlhook.run import NeverRanWarning


class Net(nn.Module):
    """Two layers in a ModuleList (a container that never runs), an unused module and a (1, D) bias module."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.unused = nn.Linear(4, 4)
        self.shared = nn.Embedding(1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers[0](x) + self.shared(torch.zeros(1, dtype=torch.long))  # (1, 4), broadcast
        return self.layers[1](torch.relu(h))


@pytest.fixture
def td():
    return TensorDict({"input": torch.randn(5, 4)}, batch_size=[5])


def test_a_pattern_reports_modules_that_never_ran(td):
    net = Net()
    with ActivationCaching(r".*").prepare(net) as hooked:
        with pytest.warns(NeverRanWarning, match=r"\['layers', 'unused'\]"):
            out = hooked(td.clone())
    assert set(out["cache"].keys()) == {"layers.0", "layers.1", "shared"}
    torch.testing.assert_close(out["cache", "layers.1"], net(td["input"]))
    hooked = HookedModule(net)
    hooked.resolve(r"layers|unused|layers\.0")
    with hooked.run(td.clone()) as run:
        saved = {n: run.save(n) for n in ["layers", "unused", "layers.0"]}
    with pytest.warns(NeverRanWarning):
        got = run.collect(saved)
    assert list(got) == ["layers.0"] and run.skipped == ["layers", "unused"]
    assert hook_count(net) == 0


def test_a_module_named_one_by_one_that_never_ran_is_an_error(td):
    net = Net()
    for paths in ("unused", ["layers.0", "unused"], r"unused|layers"):  # the last: no module of it ran
        with ActivationCaching(paths).prepare(net) as hooked:
            with pytest.raises(ProxyError, match="unused.*never ran"):
                hooked(td.clone())
    assert hook_count(net) == 0


def test_an_activation_not_shaped_like_the_batch_is_kept_as_it_is(td):
    net = Net()
    with ActivationCaching(["shared", "layers.0"]).prepare(net) as hooked:
        out = hooked(td.clone())
    assert out["cache", "shared"].shape == (1, 4) and out["cache", "layers.0"].shape == (5, 4)
    torch.testing.assert_close(out["cache", "shared"], net.shared.weight)
    two = TensorDict({"input": torch.randn(2, 3, 4)}, batch_size=[2, 3])  # several batch dims
    with ActivationCaching(["shared", "layers.0"]).prepare(net) as hooked:
        out = hooked(two)
    assert out["cache", "shared"].shape == (1, 4) and out["cache", "layers.0"].shape == (2, 3, 4)
    assert out[1, 2]["cache", "shared"].shape == (1, 4)  # shared by every example
    src = td.clone().set(("patched", "input"), torch.randn(5, 4))
    with ActivationPatching("shared", "output").prepare(net) as hooked:  # same shape both runs: no effect
        eff = hooked(src)["patch_effect", "shared"]
    assert torch.equal(eff, torch.zeros_like(eff))


def test_an_element_can_name_a_module_input(td):
    net = Net()
    x = td["input"]
    h = torch.relu(net.layers[0](x) + net.shared.weight)
    hooked = HookedModule(net)
    with hooked.run(td.clone()) as run:
        got = run.save("layers.1@input.0")
        run.set("layers.1@input.0", lambda v: 2 * v)
    torch.testing.assert_close(got.resolve(), h)  # declared before the set: the original input
    torch.testing.assert_close(run.output["output"], net.layers[1](2 * h))
    with ActivationCaching("layers.1@input.0", direction="both", target="output").prepare(net) as prepared:
        out = prepared(td.clone())
    torch.testing.assert_close(out["cache", "layers.1@input.0"], h)
    torch.testing.assert_close(
        out["cache_grad", "layers.1@input.0"], net.layers[1].weight.sum(0).expand(5, 4)
    )
    with pytest.raises(ValueError, match="index of the input"):
        with hooked.run(td.clone()) as run:
            run.save("layers.1@input")
    assert hook_count(net) == 0


def test_constants_are_passed_to_every_forward_and_kept_on_rewrapping(td):
    class Scaled(nn.Module):
        def forward(self, x, scale=1.0):
            return x * scale

    hooked = HookedModule(Scaled(), constants={"scale": 3.0})
    torch.testing.assert_close(hooked(td.clone())["output"], 3 * td["input"])
    torch.testing.assert_close(HookedModule(hooked)(td.clone())["output"], 3 * td["input"])
    with pytest.raises(TypeError, match="constants"):
        HookedModule(TensorDictModule(nn.Identity(), ["input"], ["output"]), constants={"scale": 3.0})
