import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule

from rlhook import hook_count
from rlhook.latent import ActivationCaching
from tests.models import CNN, MLP


@pytest.mark.parametrize("batch", [(5,), (2, 3)])
def test_forward_cache_matches_manual(batch):
    torch.manual_seed(0)
    model = MLP()
    x = torch.randn(*batch, 16)
    with ActivationCaching(r"layers\.\d+").prepare(model) as hooked:
        out = hooked(TensorDict({"input": x}, batch_size=batch))
    h = x
    for i, layer in enumerate(model.layers):
        h = layer(h)
        torch.testing.assert_close(out["cache", f"layers.{i}"], h)
    assert not out["cache", "layers.0"].requires_grad
    assert hook_count(model) == 0


def test_gradient_cache_and_td_module():
    torch.manual_seed(0)
    cnn = CNN()
    module = TensorDictModule(cnn, in_keys=["pixels"], out_keys=["logits"])
    x = torch.randn(3, 3, 8, 8)
    with ActivationCaching(["conv1", "relu2"], direction="both", target=lambda o: o["logits"][:, 1]).prepare(
        module
    ) as hooked:
        out = hooked(TensorDict({"pixels": x}, batch_size=[3]))
    a1 = cnn.conv1(x)
    a2 = cnn.relu2(cnn.conv2(cnn.relu1(a1)))
    logits = cnn.fc(cnn.pool(a2).flatten(1))
    g1, g2 = torch.autograd.grad(logits[:, 1].sum(), [a1, a2])
    torch.testing.assert_close(out["cache", "conv1"], a1)
    torch.testing.assert_close(out["cache_grad", "conv1"], g1)
    torch.testing.assert_close(out["cache_grad", "relu2"], g2)
    assert not x.requires_grad and all(p.grad is None for p in cnn.parameters())


def test_errors():
    with pytest.raises(ValueError, match="needs target"):
        ActivationCaching("layers.0", direction="backward")
    with pytest.raises(ValueError, match="direction must be"):
        ActivationCaching("layers.0", direction="sideways")
