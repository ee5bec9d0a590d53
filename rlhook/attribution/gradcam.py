"""Grad-CAM (Selvaraju et al., 2017) on any conv-like module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import GradientMethod, layer_outputs
from rlhook.methods import Prepared
from rlhook.targets import Target

__all__ = ["GradCAM"]

Pooling = Literal["mean", "sum", "max"] | Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]


class GradCAM(GradientMethod):
    """Class activation maps: ``relu(sum_c w_c A_c)`` with ``w_c = pool_{spatial}(d target / d A_c)``.

    ``A`` is the output of each module in ``layers=`` (required; any module whose output has a channel dim
    and spatial dims: Conv1d/2d/3d, a patch embedding, a channels-last encoder ...).

    Reads the model inputs; writes ``("attr", layer)`` for each layer (or ``("attr", name, layer)`` per
    target), the layer output's shape with the channel dim reduced to 1 (kept).

    Args:
        channel_dim: the channel dim of the layer output, counted with the batch dim first (``1`` for NCHW,
            ``-1`` for NHWC).
        spatial_dims: dims pooled to get the channel weights (default: all but batch and channel dims).
        pooling: ``"mean"`` (Grad-CAM), ``"sum"``, ``"max"``, or ``fn(grads, dims) -> pooled`` (keepdim).
        relu: apply the final ReLU (Grad-CAM does; captum's ``relu_attributions`` defaults to False).
        upsample_to: an input key (channels-first, ``batch + (C, *spatial)``): also write the map of the
            first layer interpolated to that input's spatial size and repeated over its channels at
            ``("attr", key)`` (the same shape as the input), for overlays on observations.
        interpolate: the ``F.interpolate`` mode used by ``upsample_to``.
        sum_channels: sum the weighted channels (Grad-CAM); ``False`` keeps one map per channel,
            ``w_c A_c`` (the layer output's shape; captum's ``attr_dim_summation=False``).
    """

    aggregate = True

    def __init__(
        self,
        target: Target | None = None,
        *,
        channel_dim: int = 1,
        spatial_dims: Sequence[int] | None = None,
        pooling: Pooling = "mean",
        relu: bool = True,
        upsample_to: NestedKey | None = None,
        interpolate: str = "bilinear",
        sum_channels: bool = True,
        **options: object,
    ) -> None:
        super().__init__(target, **options)
        if self.options.layers is None:
            raise ValueError("GradCAM needs layers=... (the conv-like module(s) whose maps are weighted)")
        if not callable(pooling) and pooling not in ("mean", "sum", "max"):
            raise ValueError(f"pooling must be 'mean', 'sum', 'max' or a callable, got {pooling!r}")
        self.channel_dim, self.spatial_dims, self.pooling = channel_dim, spatial_dims, pooling
        if upsample_to is not None and not sum_channels:
            raise ValueError(
                "upsample_to= needs one map per layer: it cannot be combined with sum_channels=False"
            )
        self.relu, self.upsample_to, self.interpolate = relu, upsample_to, interpolate
        self.sum_channels = sum_channels

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        grads = self.input_gradients(hooked, flat, keys)
        layers = hooked.state.layers
        acts = layer_outputs(hooked, flat, layers)
        result: dict = {}
        for t, maps in grads.items():
            for name, _ in layers:
                result.setdefault(t, {})[name] = self.cam(name, maps[name], acts[name])
            if self.upsample_to is not None:
                result[t][self.upsample_to] = self._upsample(result[t][layers[0][0]], flat)
        return result

    def _upsample(self, cam: torch.Tensor, flat: TensorDictBase) -> torch.Tensor:
        x = flat.get(self.upsample_to)
        c = self.channel_dim % cam.dim()
        cam = cam.movedim(c, 1)  # (B, 1, *spatial)
        if cam.dim() != x.dim():
            raise ValueError(
                f"cannot upsample a Grad-CAM map of shape {tuple(cam.shape)} to input {self.upsample_to!r} of shape "
                f"{tuple(x.shape)}: they need the same number of spatial dims"
            )
        align = {} if self.interpolate in ("nearest", "area", "nearest-exact") else {"align_corners": False}
        up = F.interpolate(cam, size=tuple(x.shape[2:]), mode=self.interpolate, **align)
        return up.expand(x.shape)

    def cam(self, name: str, grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The map of layer ``name`` from its gradient and output (both ``(B, ...)``)."""
        nd = act.dim()
        if nd < 2:
            raise ValueError(
                f"layer {name!r} output has shape {tuple(act.shape)}; Grad-CAM needs (batch, channels, ...)"
            )
        c = self.channel_dim % nd
        if c == 0:
            raise ValueError(f"channel_dim={self.channel_dim} is the batch dim of layer {name!r}'s output")
        dims = tuple(d % nd for d in self.spatial_dims) if self.spatial_dims is not None else None
        if dims is None:
            dims = tuple(d for d in range(1, nd) if d != c)
            if not dims:
                raise ValueError(
                    f"layer {name!r} output has shape {tuple(act.shape)}: no spatial dims to pool, so a Grad-CAM map "
                    "would be gradient x activation per unit; use a conv-like layer, or pass spatial_dims=() to ask "
                    "for exactly that"
                )
        if dims:
            if callable(self.pooling):
                weights = self.pooling(grad, dims)
            elif self.pooling == "max":
                weights = grad.amax(dim=dims, keepdim=True)
            else:
                weights = getattr(grad, self.pooling)(dim=dims, keepdim=True)
        else:
            weights = grad
        cam = (weights * act).sum(dim=c, keepdim=True) if self.sum_channels else weights * act
        return cam.clamp(min=0) if self.relu else cam
