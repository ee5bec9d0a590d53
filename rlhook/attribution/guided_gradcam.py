"""Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation times the upsampled Grad-CAM map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import layer_outputs
from rlhook.attribution.gradcam import GradCAM
from rlhook.attribution.guided import GuidedBackprop
from rlhook.methods import Prepared
from rlhook.targets import Target

__all__ = ["GuidedGradCAM"]


class GuidedGradCAM(GuidedBackprop):
    """``guided backprop map of x * upsample(Grad-CAM map of the layer)`` for every attributed input ``x``.

    The Grad-CAM map (ReLU applied, channels summed) of the one module in
    ``layers=`` comes from the plain gradient, the guided map from the guided one (two backward passes). The
    map is interpolated (``interpolate``, default ``"nearest"`` as in captum) to each input's spatial size
    (``x.shape[2:]``, channels-first) and broadcast over its channels; an input without spatial dims takes
    the map's single value per example.

    Reads the attributed inputs; writes ``("attr", k)`` (or ``("attr", name, k)``), same shape as ``k``.
    """

    aggregate = False  # needs a value per example

    def __init__(
        self,
        target: Target | None = None,
        *,
        channel_dim: int = 1,
        spatial_dims: Sequence[int] | None = None,
        interpolate: str = "nearest",
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        layers = self.options.layers
        if layers is None or (isinstance(layers, (list, tuple)) and len(layers) != 1):
            raise ValueError("GuidedGradCAM needs layers=... naming one conv-like module")
        self.channel_dim, self.spatial_dims, self.interpolate = channel_dim, spatial_dims, interpolate

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        layers = hooked.state.layers
        name = layers[0][0]
        cam_of = GradCAM(
            self.options.target, layers=name, channel_dim=self.channel_dim, spatial_dims=self.spatial_dims
        )
        plain = self.input_gradients(hooked, flat, keys)  # the rule is off outside guided_gradients
        guided = self.guided_gradients(hooked, flat, keys)
        act = layer_outputs(hooked, flat, layers)[name]
        result: dict = {}
        for t, maps in guided.items():
            cam = cam_of.cam(name, plain[t][name], act).movedim(self.channel_dim % act.dim(), 1)
            result[t] = {k: maps[k] * self._resize(cam, maps[k]) for k in keys}
        return result

    def _resize(self, cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        if not spatial:
            return cam.reshape(cam.shape[0], *[1] * (x.dim() - 1))
        if cam.dim() - 2 != len(spatial):
            raise ValueError(
                f"a Grad-CAM map of shape {tuple(cam.shape)} cannot be resized to an input of shape "
                f"{tuple(x.shape)}: they need the same number of spatial dims"
            )
        align = {} if self.interpolate in ("nearest", "area", "nearest-exact") else {"align_corners": False}
        return F.interpolate(cam, size=spatial, mode=self.interpolate, **align)
