"""Vision conveniences: a ResNet canonizer that finds residual blocks by structure, and image baselines.

``ResNetCanonizer`` recognises torchvision-shaped residual blocks without importing torchvision: a module
with children ``conv1``/``bn1``/``conv2``/``bn2`` (basic block; also ``conv3``/``bn3``: bottleneck), a
``relu`` and a ``downsample`` attribute (``None`` or ``Sequential(conv, batch norm)``). For the prepare block
it folds every batch norm into the convolution before it and makes each block's ``out += identity`` a
``Sum`` module, so LRP splits the relevance of the addition between the two summands (``Norm``) instead of
passing the gradient to both; on exit everything is restored bitwise.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from rlhook.attribution.lrp.canonizers import Canonizer, MergeBatchNorm
from rlhook.attribution.lrp.composite import Sum
from rlhook.hooks import Hooks

__all__ = ["ResNetCanonizer", "image_baseline", "residual_blocks"]

_SUM = "residual_sum"


def _is(module: nn.Module | None, kind: type) -> bool:
    return isinstance(module, kind)


def _block_kind(module: nn.Module) -> Literal["basic", "bottleneck"] | None:
    if not hasattr(module, "downsample") or not _is(getattr(module, "relu", None), nn.ReLU):
        return None
    kids = dict(module.named_children())
    pairs = [
        i
        for i in (1, 2, 3)
        if _is(kids.get(f"conv{i}"), nn.Conv2d) and _is(kids.get(f"bn{i}"), nn.BatchNorm2d)
    ]
    down = module.downsample
    if down is not None and not (
        isinstance(down, nn.Sequential)
        and len(down) == 2
        and _is(down[0], nn.Conv2d)
        and _is(down[1], nn.BatchNorm2d)
    ):
        return None
    return {(1, 2): "basic", (1, 2, 3): "bottleneck"}.get(tuple(pairs))


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``[(name, block, "basic" | "bottleneck")]`` for every torchvision-shaped residual block of ``model``."""
    return [(n, m, k) for n, m in model.named_modules() if (k := _block_kind(m)) is not None]


def _canonical_forward(block: nn.Module, kind: str):
    def forward(x: torch.Tensor) -> torch.Tensor:
        identity = x if block.downsample is None else block.downsample(x)
        out = block.relu(block.bn1(block.conv1(x)))
        if kind == "bottleneck":
            out = block.relu(block.bn2(block.conv2(out)))
            out = block.bn3(block.conv3(out))
        else:
            out = block.bn2(block.conv2(out))
        return block.relu(getattr(block, _SUM)(identity, out))

    return forward


class ResNetCanonizer(Canonizer):
    """Canonize torchvision-shaped ResNets (basic and bottleneck blocks) for LRP.

    Merges every ``conv{i}``/``bn{i}`` pair of a module and every ``Sequential`` conv -> batch norm (stem,
    blocks, downsampling shortcuts), and gives each residual block a ``Sum`` child (``residual_sum``, rule
    ``Norm`` in the default composites) through which its forward adds the shortcut and the branch.
    With ``check=True`` each rewritten block is run once on a random input, old forward against new, and a
    block with the right children but a different computation (a squeeze-excitation, a scaled residual) is an
    error: map ``lrp.Residual`` to it instead.
    """

    def __init__(self, check: bool = True) -> None:
        self.check = check

    def apply(self, model: nn.Module, hooks: Hooks) -> None:
        pairs, seen = [], set()
        for module in model.modules():
            kids = dict(module.named_children())
            for i in range(1, 10):
                conv, bn = kids.get(f"conv{i}"), kids.get(f"bn{i}")
                if _is(conv, nn.Conv2d) and _is(bn, nn.BatchNorm2d) and id(bn) not in seen:
                    pairs.append((conv, bn))
                    seen.add(id(bn))
            if isinstance(module, nn.Sequential):
                kids_list = list(module)
                for a, b in zip(kids_list, kids_list[1:]):
                    if _is(a, nn.Conv2d) and _is(b, nn.BatchNorm2d) and id(b) not in seen:
                        pairs.append((a, b))
                        seen.add(id(b))
        MergeBatchNorm(pairs).apply(model, hooks)
        for name, block, kind in residual_blocks(model):
            self._rewrite(name, block, kind, hooks)

    def _rewrite(self, name: str, block: nn.Module, kind: str, hooks: Hooks) -> None:
        if _SUM in block._modules:
            raise ValueError(f"residual block {name!r} already has a child {_SUM!r}; is it canonized twice?")
        had_forward = "forward" in block.__dict__
        old_forward = block.__dict__.get("forward")

        def undo() -> None:
            del block._modules[_SUM]
            if had_forward:
                block.forward = old_forward
            elif "forward" in block.__dict__:
                del block.__dict__["forward"]

        hooks.undo(undo)
        block.add_module(_SUM, Sum())
        original = block.forward
        block.forward = _canonical_forward(block, kind)
        if self.check:
            _check(name, block, original)


def _check(name: str, block: nn.Module, original) -> None:
    weight = block.conv1.weight
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, block.conv1.in_channels, 8, 8, generator=gen, dtype=weight.dtype).to(weight.device)
    with torch.no_grad():
        want, got = original(x.clone()), block.forward(x.clone())
    if want.shape != got.shape or not torch.allclose(
        want, got, rtol=1e-4, atol=1e-5 * float(want.abs().max())
    ):
        raise ValueError(
            f"module {name!r} has the children of a ResNet block but its forward computes something else "
            "than relu(bn(conv(...)) + downsample(x)); leave it out (ResNetCanonizer(check=...) cannot fix it) "
            f"and map lrp.Residual to it, e.g. Composite(names={{{name!r}: Residual(...)}})"
        )


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    pad = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = images
    for dim in (-1, -2):
        k = kernel.reshape(1, 1, *((1, -1) if dim == -1 else (-1, 1))).expand(c, 1, -1, -1)
        p = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
        mode = "reflect" if pad == radius else "replicate"
        x = nn.functional.conv2d(nn.functional.pad(x, p, mode=mode), k, groups=c)
    return x


def image_baseline(
    images: torch.Tensor,
    kind: Literal["black", "mean", "blur", "noise"] = "black",
    *,
    sigma: float = 4.0,
    std: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """A baseline shaped like ``images`` ``(..., C, H, W)``, for ``("baseline", k)`` of IG, DeepLift, SHAP.

    ``"black"``: zeros; ``"mean"``: each image's per-channel mean over its pixels; ``"blur"``: a Gaussian
    blur with standard deviation ``sigma`` pixels (edge-reflecting); ``"noise"``: the image plus Gaussian noise
    of standard deviation ``std`` (seeded by ``seed``; draw several for expected gradients).
    """
    if not isinstance(images, torch.Tensor) or images.dim() < 3 or not images.is_floating_point():
        raise ValueError(
            "image_baseline needs a floating tensor of images shaped (..., C, H, W), got "
            f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}"
        )
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images).clone()
    if kind == "blur":
        if sigma <= 0:
            raise ValueError(f"blur needs sigma > 0 (pixels), got {sigma}")
        flat = images.reshape(-1, *images.shape[-3:])
        return _gaussian_blur(flat, sigma).reshape(images.shape)
    if kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(images.shape, generator=gen, dtype=images.dtype).to(images.device)
        return images + std * noise
    raise ValueError(f"unknown image baseline {kind!r}; choose 'black', 'mean', 'blur' or 'noise'")
