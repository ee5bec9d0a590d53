"""The input contract, enforced once in the core: default out keys for dict/tuple outputs, targets that reduce
over the batch, numeric options and missing keys (each with an error that says what would be right)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from rlhook import MissingKeyError
from rlhook.attribution import IntegratedGradients, Saliency, SmoothGrad
from rlhook.latent import TCAV, ActivationAddition, ActivationCaching, ActivationPatching, PathPatching
from tests.models import MLP, KwargModel, TwoInput


def kwarg_td(n: int = 3) -> TensorDict:
    ids = torch.randint(0, 20, (n, 5), generator=torch.Generator().manual_seed(0))
    return TensorDict({"input_ids": ids, "attention_mask": torch.ones(n, 5)}, [n])


def test_methods_without_out_keys_on_dict_and_tuple_outputs():
    model = KwargModel()
    in_keys = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    td = kwarg_td()
    logits = model(td["input_ids"], td["attention_mask"])["logits"]
    with ActivationCaching("block").prepare(model, in_keys=in_keys) as hooked:
        out = hooked(td.clone())
    torch.testing.assert_close(out["output", "logits"], logits)  # as a plain HookedModule writes them
    assert out["cache", "block"].shape == (3, 5, 8)
    target = lambda o: o["output", "logits"][:, -1, 3]
    with Saliency(target, inputs=["attention_mask"]).prepare(model, in_keys=in_keys) as hooked:
        assert hooked(td.clone())["attr", "attention_mask"].shape == (3, 5)
    pair = TwoInput()
    two = TensorDict({"obs": torch.randn(4, 6), "goal": torch.randn(4, 3)}, [4])
    two[("patched", "obs")] = two["obs"].flip(0)
    with ActivationPatching("obs_net", lambda o: o["output", "1"][:, 0]).prepare(
        pair, in_keys=["obs", "goal"]
    ) as h:
        got = h(two.clone())
    assert got["patch_effect", "obs_net"].shape == (4,)
    assert got["patch", "obs_net", "output", "0"].shape == (4, 4)


def test_a_target_that_reduces_over_the_batch_names_both_shapes():
    td = TensorDict({"input": torch.randn(5, 16)}, [5])
    with Saliency(target=lambda o: o["output"].mean(0)).prepare(MLP()) as hooked:
        with pytest.raises(ValueError, match=r"shape \(4,\).*batch shape \(5,\)"):
            hooked(td)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: IntegratedGradients("output", n_steps=0), ValueError, "n_steps must be a positive int"),
        (lambda: IntegratedGradients("output", n_steps=200_000), ValueError, "more than the supported 4096"),
        (lambda: IntegratedGradients("output", n_steps=2.5), TypeError, "n_steps must be a positive int"),
        (lambda: Saliency("output", chunk_size=0), ValueError, "chunk_size must be a positive int"),
        (lambda: Saliency("output", chunk_size=True), TypeError, "chunk_size must be a positive int"),
        (lambda: SmoothGrad("output", n_samples=-1), ValueError, "n_samples must be a positive int"),
    ],
)
def test_numeric_options_are_checked_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_many_riemann_steps_are_allowed():
    IntegratedGradients("output", n_steps=100_000, rule="riemann_middle")  # no eigenproblem: no cap


@pytest.mark.parametrize(
    "method",
    [
        ActivationPatching("layers.0", "output"),
        PathPatching("layers.0", "layers.1", "output"),
        ActivationAddition("layers.0"),
        TCAV("layers.0", lambda o: o["output"][:, 0]),
    ],
    ids=["patching", "path_patching", "activation_addition", "tcav"],
)
def test_missing_contrast_inputs_list_the_keys_that_exist(method):
    td = TensorDict({"input": torch.randn(4, 16), "extra": torch.zeros(4)}, [4])
    with method.prepare(MLP()) as hooked:
        with pytest.raises(MissingKeyError, match=r"its keys are \['extra', 'input'\]"):
            hooked(td)


def top(td: TensorDict) -> set[str]:
    return {k if isinstance(k, str) else k[0] for k in td.keys(include_nested=True, leaves_only=True)}


def test_renaming_the_output_key_renames_every_product():
    td = TensorDict({"input": torch.randn(3, 16)}, [3])
    with IntegratedGradients(lambda o: o["output"][:, 0], n_steps=4, key="ig").prepare(MLP()) as hooked:
        out = hooked(td)
    assert top(out) == {"input", "ig", "ig_delta"}
    method = ActivationPatching("layers.0", "output").set_keys(effect="fx", patch="after", source="src")
    td = TensorDict({"input": torch.randn(3, 16), ("src", "input"): torch.randn(3, 16)}, [3])
    with method.prepare(MLP()) as hooked:
        out = hooked(td)
    assert top(out) == {"input", "output", "src", "after", "fx"}
    with pytest.raises(ValueError, match="roles are"):
        Saliency("output").set_keys(nope="x")
