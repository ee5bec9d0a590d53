"""A procedurally generated image task with known factors: coloured, textured shapes on a noisy background.

Each 32x32 RGB image shows one shape (circle, square, triangle) in one colour (red, green, blue) with one
texture (solid, striped: horizontal stripes two pixels wide), at a random position and size, on a grey
background with pixel noise. The class is the (texture, shape) combination, six classes; colour, position
and size are nuisance factors. Everything is drawn from a seed: nothing is downloaded.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

__all__ = ["CLASSES", "COLOURS", "SHAPES", "SIZE", "TEXTURES", "make_shapes"]

SIZE = 32
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("solid", "striped")
COLOURS = ("red", "green", "blue")
#: class ``2 * shape + texture``
CLASSES = tuple(f"{t} {s}" for s in SHAPES for t in TEXTURES)
_RGB = torch.tensor([[0.9, 0.15, 0.1], [0.1, 0.8, 0.2], [0.15, 0.25, 0.95]])


def _masks(shape: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` boolean masks of the shapes (``r``: radius, half-side, or the triangle's half-height)."""
    grid = torch.arange(SIZE, dtype=torch.float32)
    dy = grid.reshape(1, -1, 1) - cy.reshape(-1, 1, 1)
    dx = grid.reshape(1, 1, -1) - cx.reshape(-1, 1, 1)
    r = r.reshape(-1, 1, 1)
    circle = dy**2 + dx**2 <= r**2
    square = (dy.abs() <= 0.85 * r) & (dx.abs() <= 0.85 * r)
    # apex up: rows from cy - r to cy + r, half-width growing linearly to r at the base
    triangle = (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2)
    kind = shape.reshape(-1, 1, 1)
    return torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))


def make_shapes(n: int, seed: int = 0) -> TensorDict:
    """``n`` images and their factors, as a TensorDict of batch ``[n]``.

    Keys: ``"image"`` ``(n, 3, 32, 32)`` in [0, 1]; ``"label"`` (class index into ``CLASSES``); ``"shape"``,
    ``"texture"``, ``"colour"`` (indices into ``SHAPES``, ``TEXTURES``, ``COLOURS``).
    """
    if n < 1:
        raise ValueError(f"make_shapes needs n >= 1 images, got {n}")
    g = torch.Generator().manual_seed(seed)
    shape = torch.randint(0, 3, (n,), generator=g)
    texture = torch.randint(0, 2, (n,), generator=g)
    colour = torch.randint(0, 3, (n,), generator=g)
    r = 7.0 + 4.0 * torch.rand(n, generator=g)
    cy = r + 1 + (SIZE - 2 * r - 2) * torch.rand(n, generator=g)
    cx = r + 1 + (SIZE - 2 * r - 2) * torch.rand(n, generator=g)
    mask = _masks(shape, cy, cx, r)
    rows = torch.arange(SIZE).reshape(1, -1, 1)
    offset = torch.randint(0, 4, (n, 1, 1), generator=g)
    dark = ((rows + offset) // 2) % 2 == 1
    shade = torch.where((texture.reshape(-1, 1, 1) == 1) & dark, 0.3, 1.0)
    rgb = _RGB[colour] * (0.85 + 0.3 * torch.rand(n, 1, generator=g))
    fg = rgb.reshape(n, 3, 1, 1) * shade.unsqueeze(1)
    bg = 0.45 + 0.1 * torch.rand(n, 1, 1, 1, generator=g) + 0.06 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    image = torch.where(mask.unsqueeze(1), fg, bg).clamp(0, 1)
    return TensorDict(
        {"image": image, "label": 2 * shape + texture, "shape": shape, "texture": texture, "colour": colour},
        batch_size=[n],
    )
