"""Layer attribution on modules with tuple outputs and several positional inputs, against captum at float64.

The toy: ``Block(x, y) -> (h, aux)`` (two conv maps), then ``Mix(h', aux)`` with two positional inputs. rlhook
names a tuple element with an element path (``"block@0"``, ``"block@1"``) and a positional input with
``"mix@input.1"`` (``layer_input=True`` means input 0); captum returns one attribution per element of a
tuple output, or per positional input with ``attribute_to_layer_input=True``.

Layer IG: rlhook integrates each named element on its own path (the other elements keep their values at the
inputs); captum interpolates every element of a tuple together. The two agree when the other elements are
the same at the inputs and at the baselines, so the IG checks give the input that feeds the other element a
baseline equal to itself (``aux`` depends on ``y`` only, ``h`` on ``x`` only).
"""

from __future__ import annotations

import captum.attr as ca
import pytest
import torch
from tensordict import TensorDict
from torch import nn

from rlhook.attribution import GradCAM, InputXGradient, IntegratedGradients, Saliency
from rlhook.latent import ActivationCaching

DT = torch.float64
B = 4


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_h, self.conv_aux = nn.Conv1d(2, 3, 3, padding=1), nn.Conv1d(2, 2, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.conv_h(x)), self.conv_aux(y)


class Mix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5 * 8, 3)

    def forward(self, h: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([h * aux[:, :1], torch.tanh(aux)], 1).flatten(1))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block, self.mix = Block(), Mix()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, aux = self.block(x, y)
        return self.mix(1.5 * h, aux)


def _net() -> Net:
    torch.manual_seed(0)
    return Net().to(DT)


def _td(fixed: str | None = None) -> TensorDict:
    """Inputs and baselines; ``fixed`` names the input whose baseline is the input itself."""
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(B, 2, 8, generator=g, dtype=DT) for _ in range(2))
    td = TensorDict({"x": x, "y": y}, batch_size=[B])
    for k in ("x", "y"):
        td["baseline", k] = td[k].clone() if k == fixed else 0.3 * td[k].flip(-1)
    return td


def _ours(method, td: TensorDict) -> TensorDict:
    with method.prepare(_net(), in_keys=["x", "y"]) as hooked:
        return hooked(td.clone())


def _target(out: TensorDict) -> torch.Tensor:
    return out["output"][:, 1]


def _inputs(td: TensorDict) -> tuple:
    return td["x"], td["y"]


def _baselines(td: TensorDict) -> tuple:
    return td["baseline", "x"], td["baseline", "y"]


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float = 1e-10) -> None:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=tol, atol=tol)


ELEMENTS = [0, 1]


@pytest.mark.parametrize("e", ELEMENTS)
def test_layer_activation_of_a_tuple_element(e):
    net, td = _net(), _td()
    ref = ca.LayerActivation(net, net.block).attribute(_inputs(td))
    assert isinstance(ref, tuple) and len(ref) == 2
    got = _ours(ActivationCaching(f"block@{e}"), td)["cache", f"block@{e}"]
    _close(got, ref[e])


@pytest.mark.parametrize("e", ELEMENTS)
def test_layer_gradient_x_activation_of_a_tuple_element(e):
    net, td = _net(), _td()
    ref = ca.LayerGradientXActivation(net, net.block).attribute(_inputs(td), target=1)
    got = _ours(InputXGradient(_target, layers=f"block@{e}", inputs=[]), td)["attr", f"block@{e}"]
    _close(got, ref[e])


@pytest.mark.parametrize("e", ELEMENTS)
def test_layer_gradcam_of_a_tuple_element(e):
    net, td = _net(), _td()
    ref = ca.LayerGradCam(net, net.block).attribute(_inputs(td), target=1, relu_attributions=True)
    got = _ours(GradCAM(_target, layers=f"block@{e}"), td)["attr", f"block@{e}"]
    _close(got, ref[e])


@pytest.mark.parametrize("e", ELEMENTS)
def test_layer_integrated_gradients_of_a_tuple_element(e):
    net, td = _net(), _td(fixed="y" if e == 0 else "x")  # the other element is the same at both ends
    ref = ca.LayerIntegratedGradients(net, net.block).attribute(
        _inputs(td), baselines=_baselines(td), target=1, n_steps=8
    )
    other = ref[1 - e].abs().max()
    assert other == 0 and ref[e].abs().max() > 1e-3  # the set-up holds: only element e moves
    with IntegratedGradients(_target, layers=f"block@{e}", n_steps=8).prepare(
        _net(), in_keys=["x", "y"]
    ) as h:
        out = h(td.clone())
    _close(out["attr", f"block@{e}"], ref[e], tol=1e-7)  # captum casts the quadrature weights to float32
    assert out["attr_delta"].abs().max() < 1e-3  # completeness along the element's path, 8 points


@pytest.mark.parametrize("i", [0, 1])
def test_attribution_to_each_positional_input_of_a_layer(i):
    """``layer_input=True`` is input 0 (captum's ``attribute_to_layer_input=True`` gives a tuple over every
    positional input); ``"mix@input.1"`` names input 1."""
    net, td = _net(), _td()
    layers = {"layers": "mix", "layer_input": True} if i == 0 else {"layers": "mix@input.1"}
    name = "mix" if i == 0 else "mix@input.1"
    inputs = _inputs(td)
    ref_act = ca.LayerActivation(net, net.mix).attribute(inputs, attribute_to_layer_input=True)
    ref_gxa = ca.LayerGradientXActivation(net, net.mix).attribute(
        inputs, target=1, attribute_to_layer_input=True
    )
    ref_cam = ca.LayerGradCam(net, net.mix).attribute(
        inputs, target=1, attribute_to_layer_input=True, relu_attributions=True
    )
    assert len(ref_act) == len(ref_gxa) == len(ref_cam) == 2
    _close(_ours(ActivationCaching(f"mix@input.{i}"), td)["cache", f"mix@input.{i}"], ref_act[i])
    _close(_ours(InputXGradient(_target, inputs=[], **layers), td)["attr", name], ref_gxa[i])
    _close(_ours(GradCAM(_target, **layers), td)["attr", name], ref_cam[i])
    grads = ref_gxa[i] / ref_act[i]
    _close(_ours(Saliency(_target, abs=False, inputs=[], **layers), td)["attr", name], grads, tol=1e-8)


@pytest.mark.parametrize("i", [0, 1])
def test_layer_integrated_gradients_of_each_positional_input(i):
    net, td = _net(), _td(fixed="y" if i == 0 else "x")  # the other input of mix is the same at both ends
    ref = ca.LayerIntegratedGradients(net, net.mix).attribute(
        _inputs(td), baselines=_baselines(td), target=1, n_steps=8, attribute_to_layer_input=True
    )
    assert ref[1 - i].abs().max() == 0
    layers = {"layers": "mix", "layer_input": True} if i == 0 else {"layers": "mix@input.1"}
    got = _ours(IntegratedGradients(_target, n_steps=8, **layers), td)[
        "attr", "mix" if i == 0 else "mix@input.1"
    ]
    _close(got, ref[i], tol=1e-7)


def test_a_whole_tuple_output_is_refused_with_the_element_paths():
    with pytest.raises(TypeError, match=r"layer 'block' gives a tuple.*'block@0'"):
        _ours(InputXGradient(_target, layers="block", inputs=[]), _td())
