"""Elements of structured outputs ("lstm@0", "lstm@1.0", "attn@0") through every capturing method.

Oracles: the module's own structured output computed by hand, and hand-written replacements of one element.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from rlhook import HookedModule, hook_count
from rlhook.attribution import IntegratedGradients, Saliency
from rlhook.elements import parse, replace, select, split
from rlhook.latent import ActivationCaching, ActivationPatching, Probing, SteeringVectors
from rlhook.rl import Recorder
from rlhook.weights import Splice


class Recurrent(nn.Module):
    """``nn.LSTM`` (returns ``(output, (h, c))``) then a head on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, c) = self.lstm(x)
        return self.head(out[:, -1])


class TupleAttention(nn.Module):
    """Returns ``(output, weights)`` as every HF attention module does."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x)
        return self.head(out.mean(1))


@pytest.fixture
def lstm():
    torch.manual_seed(0)
    return Recurrent().double()


@pytest.fixture
def td():
    return TensorDict({"input": torch.randn(4, 6, 3, dtype=torch.float64)}, [4])


def test_grammar():
    assert split("lstm@1.0") == ("lstm", (1, 0)) and split("block@hidden_states") == (
        "block",
        ("hidden_states",),
    )
    assert split("layers.2") == ("layers.2", ()) and parse("-1") == (-1,)
    value = (torch.zeros(2), (torch.ones(2), torch.full((2,), 2.0)))
    assert select(value, (1, 1))[0] == 2
    new = replace(value, (1, 0), torch.full((2,), 5.0))
    assert new[1][0][0] == 5 and new[1][1][0] == 2 and value[1][0][0] == 1  # a new structure
    assert replace({"a": 1, "b": 2}, ("a",), 3) == {"a": 3, "b": 2}
    with pytest.raises(IndexError, match="3 elements|2 elements"):
        select(value, (5,))
    with pytest.raises(KeyError, match="has \\['a'\\]"):
        select({"a": 1}, ("b",))
    with pytest.raises(ValueError, match="empty element"):
        split("lstm@")


def test_caching_elements_of_an_lstm(lstm, td):
    out, (h, c) = lstm.lstm(td["input"])
    with ActivationCaching(["lstm@0"]).prepare(lstm) as hooked:
        got = hooked(td.clone())
    torch.testing.assert_close(got["cache", "lstm@0"], out)
    with HookedModule(lstm).run(td.clone()) as run:  # h and c are (layers, B, H): not batch-first
        saved_h, saved_c = run.save("lstm@1.0"), run.save("lstm@1.1")
    torch.testing.assert_close(saved_h.resolve(), h)
    torch.testing.assert_close(saved_c.resolve(), c)
    with pytest.raises(
        TypeError, match="lstm@0"
    ):  # the whole tuple is not a tensor: the error says how to pick
        with ActivationCaching("lstm").prepare(lstm) as hooked:
            hooked(td.clone())
    assert hook_count(lstm) == 0


def test_set_writes_an_element_back(lstm, td):
    out, _ = lstm.lstm(td["input"])
    hooked = HookedModule(lstm)
    with hooked.run(td.clone()) as run:
        run.set("lstm@0", lambda o: 2 * o)
    torch.testing.assert_close(run.output["output"], lstm.head(2 * out[:, -1]))


def test_patching_steering_and_splicing_an_element(lstm, td):
    out, _ = lstm.lstm(td["input"])
    src = td.clone().set(("patched", "input"), td["input"].flip(0))
    src_out, _ = lstm.lstm(src["patched", "input"])
    with ActivationPatching("lstm@0", "output").prepare(lstm) as hooked:
        got = hooked(src.clone())
    torch.testing.assert_close(got["patch", "lstm@0", "output"], lstm.head(src_out[:, -1]))
    v = torch.arange(5, dtype=torch.float64)
    with SteeringVectors({"lstm@0": v}, scale=0.5).prepare(lstm) as hooked:
        steered = hooked(td.clone())["output"]
    torch.testing.assert_close(steered, lstm.head((out + 0.5 * v)[:, -1]))
    with Splice("lstm@0", lambda o: -o).prepare(lstm) as hooked:
        torch.testing.assert_close(hooked(td.clone())["output"], lstm.head(-out[:, -1]))
    assert hook_count(lstm) == 0


def test_layer_attribution_to_an_element(lstm, td):
    out, _ = lstm.lstm(td["input"])
    out = out.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(lstm.head(out[:, -1])[:, 0].sum(), out)
    with Saliency(lambda o: o["output"][:, 0], layers="lstm@0", abs=False).prepare(lstm) as hooked:
        got = hooked(td.clone())
    torch.testing.assert_close(got["attr", "lstm@0"], grad)
    with IntegratedGradients(lambda o: o["output"][:, 0], layers="attn@0", n_steps=8).prepare(
        TupleAttention().double()
    ) as hooked:
        ig = hooked(TensorDict({"input": torch.randn(3, 5, 4, dtype=torch.float64)}, [3]))
    assert ig["attr", "attn@0"].shape == (3, 5, 4)


def test_recorder_and_probing_read_elements(lstm, td):
    policy = TensorDictModule(lstm, in_keys=["input"], out_keys=["output"])
    rec = Recorder(policy, ["lstm@0"])
    got = rec(td.clone())
    out, _ = lstm.lstm(td["input"])
    torch.testing.assert_close(got["rlhook", "lstm@0"], out)
    labels = td["input"][:, -1, 0]
    with Probing(["lstm@0"]).prepare(lstm) as hooked:
        scored = hooked(td.clone().set("labels", labels))
    assert ("probe", "lstm@0", "r2") in scored.keys(include_nested=True)
