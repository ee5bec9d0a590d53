import re

import pytest
from tensordict.nn import TensorDictModule
from torch import nn

from rlhook.paths import PathError, resolve, resolve_one
from tests.models import MLP


class Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 2), nn.ReLU()) for _ in range(3)])
        self.heads = nn.ModuleDict({"value": nn.Linear(2, 1), "pol-icy": nn.Linear(2, 2)})


@pytest.fixture
def model():
    return Named()


@pytest.mark.parametrize(
    "path, expected",
    [
        ("blocks.1", "blocks.1"),
        ("blocks[1]", "blocks.1"),
        ("blocks[2][0]", "blocks.2.0"),
        ("blocks.2.0", "blocks.2.0"),
        ('heads["value"]', "heads.value"),
        ("heads['pol-icy']", "heads.pol-icy"),
        ("blocks[-1]", "blocks.-1"),
    ],
)
def test_dotted_paths(model, path, expected):
    name, module = resolve_one(model, path)
    assert name == expected
    target = model.blocks[2] if expected == "blocks.-1" else model.get_submodule(expected)
    assert module is target


def test_regex_is_full_match(model):
    names = [n for n, _ in resolve(model, r"blocks\.\d")]
    assert names == ["blocks.0", "blocks.1", "blocks.2"]
    # no silent prefix matching: "blocks\.\d" must not match "blocks.0.0"
    assert all(n.count(".") == 1 for n in names)
    assert [n for n, _ in resolve(model, re.compile(r"blocks\.\d\.1"))] == [
        "blocks.0.1",
        "blocks.1.1",
        "blocks.2.1",
    ]


def test_module_object_and_lists(model):
    assert resolve_one(model, model.blocks[1][0])[0] == "blocks.1.0"
    names = [n for n, _ in resolve(model, ["blocks.0", model.heads["value"], r"blocks\.[12]"])]
    assert names == ["blocks.0", "heads.value", "blocks.1", "blocks.2"]


def test_unknown_path_lists_closest_names(model):
    with pytest.raises(PathError, match=r"blocks\.1"):
        resolve(model, "block.1")
    with pytest.raises(PathError, match="Closest names"):
        resolve(model, "blocks[7]")
    with pytest.raises(PathError, match="not a submodule"):
        resolve(model, nn.Linear(2, 2))
    with pytest.raises(PathError, match="matches 3 modules"):
        resolve_one(model, r"blocks\.\d")
    with pytest.raises(PathError):
        resolve(model, [])
    with pytest.raises(PathError, match="not a module path nor a valid regex"):
        resolve(model, "blocks[(")


def test_never_executes_code(model, tmp_path):
    flag = tmp_path / "x"
    with pytest.raises(PathError):
        resolve(model, f"__import__('pathlib').Path('{flag}').touch()")
    assert not flag.exists()


def test_paths_relative_to_wrapped_model():
    mlp = MLP()
    td_module = TensorDictModule(mlp, in_keys=["input"], out_keys=["output"])
    assert resolve_one(td_module, "layers.1")[1] is mlp.layers[1]
    assert resolve_one(td_module, "module.layers.1")[1] is mlp.layers[1]
    assert [n for n, _ in resolve(td_module, r"layers\.\d")] == ["layers.0", "layers.1", "layers.2"]
