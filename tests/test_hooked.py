import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from rlhook import HookedModule, MissingKeyError
from tests.models import MLP, KwargModel, TwoInput, two_input_td, two_input_td_module


@pytest.mark.parametrize("batch", [(), (5,), (2, 3), (2, 3, 4)])
def test_plain_module_any_batch_shape(batch):
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(*batch, 16)
    out = HookedModule(model)(TensorDict({"input": x}, batch_size=batch))
    assert out.batch_size == torch.Size(batch)
    torch.testing.assert_close(out["output"], model(x))


def test_tuple_outputs_and_nested_keys():
    model = TwoInput()
    td = TensorDict({"obs": {"state": torch.randn(4, 6)}, "goal": torch.randn(4, 3)}, batch_size=[4])
    hooked = HookedModule(model, in_keys=[("obs", "state"), "goal"], out_keys=[("agent", "logits"), "value"])
    out = hooked(td)
    logits, value = model(td["obs", "state"], td["goal"])
    torch.testing.assert_close(out["agent", "logits"], logits)
    torch.testing.assert_close(out["value"], value)
    default = HookedModule(model, in_keys=[("obs", "state"), "goal"])(td.clone())
    torch.testing.assert_close(default["output", "1"], value)
    with pytest.raises(ValueError, match="returned 2 outputs but out_keys has 3"):
        HookedModule(model, in_keys=[("obs", "state"), "goal"], out_keys=["a", "b", "c"])(td.clone())


def test_hf_style_kwargs_and_dict_outputs():
    torch.manual_seed(0)
    model = KwargModel()
    ids = torch.randint(0, 20, (2, 7))
    mask = torch.ones(2, 7)
    td = TensorDict({"ids": ids, "mask": mask}, batch_size=[2])
    hooked = HookedModule(
        model, in_keys={"ids": "input_ids", "mask": "attention_mask"}, out_keys={"logits": "logits"}
    )
    out = hooked(td.clone())
    torch.testing.assert_close(out["logits"], model(input_ids=ids, attention_mask=mask)["logits"])
    default = HookedModule(model, in_keys={"ids": "input_ids", "mask": "attention_mask"})(td.clone())
    assert set(default["output"].keys()) == {"logits", "hidden"}
    with pytest.raises(KeyError, match="model outputs have no"):
        HookedModule(model, in_keys={"ids": "input_ids", "mask": "attention_mask"}, out_keys={"nope": "x"})(
            td
        )


def test_td_module_and_missing_key_error():
    module = two_input_td_module()
    td = two_input_td((3, 2))
    out = HookedModule(module)(td.clone())
    assert out["logits"].shape == (3, 2, 4)
    with pytest.raises(
        MissingKeyError, match=r"input key 'goal' is not in the TensorDict; its keys are \['obs'\]"
    ):
        HookedModule(module)(TensorDict({"obs": torch.randn(3, 6)}, batch_size=[3]))
    with pytest.raises(MissingKeyError, match="its keys are"):
        HookedModule(MLP())(TensorDict({"x": torch.randn(3, 16)}, batch_size=[3]))
    with pytest.raises(TypeError, match="list of keys"):
        HookedModule(MLP(), in_keys="input")
    with pytest.raises(TypeError, match="called with a TensorDict"):
        HookedModule(MLP())(torch.randn(3, 16))


def test_rewrapping_keeps_keys():
    inner = HookedModule(TwoInput(), in_keys=["obs", "goal"], out_keys=["l", "v"])
    outer = HookedModule(inner)
    assert outer.in_keys == ["obs", "goal"] and outer.out_keys == ["l", "v"]
    assert outer.model is inner.model
    assert TensorDictModule(MLP(), in_keys=["input"], out_keys=["output"]) is not None
