"""One table: every latent / weights method x {success, exception in the block, exception inside the forward}.

After each, the model has no hook of ours, the same parameters bitwise, the same flags and submodules.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from rlhook.attribution import InputXGradient
from rlhook.latent import (
    TCAV,
    ActivationAddition,
    ActivationPatching,
    PathPatching,
    Probing,
    SAESplice,
    SparseAutoencoder,
    SteeringVectors,
)
from rlhook.weights import LowRank, Pruning, Splice, TaskVector
from tests.latent.helpers import Boom, assert_unchanged, snapshot
from tests.models import MLP


class Flaky(MLP):
    """An MLP whose forward can be told to raise after its first block ran."""

    fail = False

    def forward(self, x):
        x = self.layers[0](x)
        if self.fail:
            raise Boom("inside the forward")
        for layer in self.layers[1:]:
            x = layer(x)
        return self.head(x)


def data() -> TensorDict:
    g = torch.Generator().manual_seed(0)
    x = lambda: torch.randn(12, 16, generator=g)
    return TensorDict(
        {
            "input": x(),
            ("patched", "input"): x(),
            ("positive", "input"): x() + 1,
            ("negative", "input"): x() - 1,
            "labels": torch.randn(12, generator=g),
        },
        [12],
    )


def base_weights():
    torch.manual_seed(1)
    return {k: v + 0.01 for k, v in Flaky().state_dict().items()}


METHODS = {
    "patching": lambda: ActivationPatching(r"layers\.\d", "output", units=[1, 2]),
    "path_patching": lambda: PathPatching("layers.0", "layers.2", "output", freeze="layers.1"),
    "activation_addition": lambda: ActivationAddition("layers.1"),
    "steering": lambda: SteeringVectors({"layers.1": torch.ones(32)}, scale=0.5),
    "probing": lambda: Probing(["layers.0", "layers.2"]),
    "tcav": lambda: TCAV("layers.1", lambda out: out["output"][..., 0]),
    "sae": lambda: SAESplice("layers.2", SparseAutoencoder(32, 16, kind="topk", k=4)),
    "adapter": lambda: Splice("layers.1", LowRank(32, 2, init_scale=1.0), mode="add"),
    "pruning_magnitude": lambda: Pruning(amount=0.5, structured=True),
    "pruning_grad": lambda: Pruning(
        "head", amount=0.5, importance="grad_x_weight", data=data(), target=lambda o: o["output"][..., 0]
    ),
    "pruning_attr": lambda: Pruning(
        "layers.1.0", amount=0.5, structured=True, importance=InputXGradient("output"), data=data()
    ),
    "task_vector": lambda: TaskVector(Flaky().state_dict(), base_weights(), scale=2.0),
}


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("where", ["none", "block", "forward"])
def test_model_left_as_it_was(name, where):
    torch.manual_seed(0)
    model = Flaky()
    model.train()
    model.layers[1].eval()  # mixed flags must survive too
    before = snapshot(model)
    method = METHODS[name]()
    try:
        with method.prepare(model) as hooked:
            if where == "forward":
                model.fail = True
            out = hooked(data())
            assert out is not None
            if where == "block":
                raise Boom("in the block")
    except Boom:
        assert where != "none"
    else:
        assert where == "none"
    model.fail = False
    assert_unchanged(model, before)
