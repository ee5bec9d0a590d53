"""Steering: extract contrast vectors (``ActivationAddition``) and add vectors to activations (``SteeringVectors``).

Steering state lives in buffers of a small ``SteeringState`` module (never in hook closures), and the hooks are
top-level picklable objects that read it, so a steered policy can be pickled to collector workers and a
shared-memory ``SteeringState`` (``state.share_memory()``) lets the scale be changed while they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn

from rlhook import elements
from rlhook.hooks import Hooks
from rlhook.keys import get_key, source_td
from rlhook.methods import Method, Prepared
from rlhook.paths import Path

__all__ = ["ActivationAddition", "SteeringState", "SteeringVectors", "vectors_from"]


def _acts(hooked: Prepared, td: TensorDictBase) -> dict[str, Any]:
    with torch.no_grad(), hooked.run(td) as run:
        saved = {name: run.save((name, module)) for name, module in hooked.state.modules}
    return run.collect(saved)


class ActivationAddition(Method):
    """``mean(positive) - mean(negative)`` of the activations of each module at ``paths``.

    Reads ``("positive", k)`` and ``("negative", k)`` for the model's inputs ``k`` (inputs without such an entry
    are shared). Writes ``("steer", name)`` for each module: the vector, shape ``activation.shape[1:]``,
    expanded (no copy) over the TensorDict's batch dims; ``vectors_from(td)`` (or the prepared module's
    ``state.vectors``) gives ``{name: vector}`` for ``SteeringVectors``. The mean is over the batch (``mean_dims`` adds more dims, e.g. positions).
    """

    keys = {"positive": "positive", "negative": "negative", "steer": "steer"}

    def __init__(self, paths: Path | Sequence[Path], *, mean_dims: Sequence[int] = ()) -> None:
        self.paths, self.mean_dims = paths, tuple(mean_dims)

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        hooked.state.modules = hooked.resolve(self.paths)
        hooked.state.vectors = {}

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        positive, negative = self.key("positive"), self.key("negative")
        pos = _acts(hooked, source_td(td, hooked.in_keys, positive).exclude(negative))
        neg = _acts(hooked, source_td(td, hooked.in_keys, negative).exclude(positive))
        for name, _ in hooked.state.modules:
            if name not in pos:  # a module a pattern selected that never ran (reported by the run)
                continue
            dims = (0, *(d % pos[name].dim() for d in self.mean_dims))
            vec = pos[name].float().mean(dims) - neg[name].float().mean(dims)
            vec = vec.to(pos[name].dtype)
            hooked.state.vectors[name] = vec
            td.set(self.key("steer", name), vec.expand(*td.batch_size, *vec.shape))
        return td


def vectors_from(td: TensorDictBase) -> dict[str, torch.Tensor]:
    """``{name: vector}`` from the ``("steer", name)`` entries an ``ActivationAddition`` wrote into ``td``."""
    steer = get_key(td, "steer", what="steering")
    out = {}
    for key in steer.keys(include_nested=True, leaves_only=True):
        v = steer.get(key)
        name = key if isinstance(key, str) else ".".join(key)
        out[name] = v.reshape(-1, *v.shape[td.batch_dims :])[0].clone()
    return out


class SteeringState(nn.Module):
    """Buffers of the steering vectors (``vector_i``) and scales (``scale_i``), one pair per steered module."""

    def __init__(self, vectors: Sequence[torch.Tensor | None], scales: Sequence[float]) -> None:
        super().__init__()
        for i, (v, s) in enumerate(zip(vectors, scales)):
            self.register_buffer(f"vector_{i}", None if v is None else v.detach().clone())
            self.register_buffer(f"scale_{i}", torch.tensor(float(s)))

    def set_scale(self, scale: float, index: int | None = None) -> None:
        """Change the scale in place (all modules, or the ``index``-th one): shared copies see the change."""
        for name, buf in self.named_buffers():
            if name.startswith("scale_") and (index is None or name == f"scale_{index}"):
                buf.fill_(scale)


class _Add:
    """``output + scale * vector`` (or ``+ scale * fn(output)``), positions optional: a picklable value
    function for ``Run.set`` that reads the live ``SteeringState``."""

    def __init__(
        self,
        state: SteeringState,
        index: int,
        fn: Callable[[torch.Tensor], torch.Tensor] | None,
        positions: Sequence[int] | None,
        name: str,
    ) -> None:
        self.state, self.index, self.fn, self.positions, self.name = state, index, fn, positions, name

    def __call__(self, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"module {self.name!r} returned {type(output).__name__}; steering needs a tensor: name an element "
                f"of the output, e.g. '{elements.first_of(self.name)}'"
            )
        scale = getattr(self.state, f"scale_{self.index}")
        delta = self.fn(output) if self.fn is not None else getattr(self.state, f"vector_{self.index}")
        delta = delta.to(device=output.device, dtype=output.dtype) * scale.to(output.dtype)
        try:
            torch.broadcast_shapes(delta.shape, output.shape)
        except RuntimeError:
            raise ValueError(
                f"steering vector for {self.name!r} has shape {tuple(delta.shape)}, which does not broadcast to "
                f"the activation's shape {tuple(output.shape)}"
            ) from None
        if self.positions is None:
            return output + delta
        out = output.clone()
        idx = torch.as_tensor(self.positions, device=output.device)
        if delta.dim() == output.dim():  # per example: (B, T, ...)
            d = delta.index_select(1, idx)
        elif delta.dim() == output.dim() - 1:  # per position: (T, ...)
            d = delta.index_select(0, idx)
        else:
            d = delta
        out[:, idx] = out[:, idx] + d
        return out


class SteeringVectors(Method):
    """Add ``scale * vector`` (or ``scale * fn(activation)``) to the output of each module in ``vectors``.

    Args:
        vectors: ``{path: Tensor | callable}``; a tensor broadcasts against the activation (shape ``(d,)`` or
            ``activation.shape[1:]``), a callable gets the activation and returns the addition.
        scale: one number or ``{path: number}``.
        positions: optional indices along dim 1 (sequence positions) that are steered; others are left alone.

    Calling the prepared module runs the steered model and writes its usual outputs. ``method.state`` is the
    ``SteeringState`` whose buffers hold vectors and scales (``method.state.set_scale(a)`` changes them live).
    """

    def __init__(
        self,
        vectors: Mapping[Path, torch.Tensor | Callable[[torch.Tensor], torch.Tensor]],
        *,
        scale: float | Mapping[Path, float] = 1.0,
        positions: Sequence[int] | None = None,
    ) -> None:
        if not vectors:
            raise ValueError("SteeringVectors needs at least one {path: vector}")
        for path, v in vectors.items():
            if not (isinstance(v, torch.Tensor) or callable(v)):
                raise TypeError(
                    f"the steering value for {path!r} must be a tensor or a callable, not {type(v).__name__}"
                )
        if isinstance(scale, Mapping):
            unknown = [p for p in scale if p not in vectors]
            if unknown:
                raise KeyError(f"scale has paths {unknown} that are not in vectors ({list(vectors)})")
        self.vectors, self.scale, self.positions = dict(vectors), scale, positions
        paths = list(self.vectors)
        scales = [self.scale.get(p, 1.0) if isinstance(self.scale, Mapping) else self.scale for p in paths]
        tensors = [v if isinstance(v, torch.Tensor) else None for v in self.vectors.values()]
        self.state = SteeringState(tensors, scales)

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        hooked.state.adds = []
        for i, (path, v) in enumerate(self.vectors.items()):
            name, module = hooked.resolve_one(path)
            fn = None if isinstance(v, torch.Tensor) else v
            hooked.state.adds.append(((name, module), _Add(self.state, i, fn, self.positions, name)))

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        with hooked.run(td) as run:
            for site, add in hooked.state.adds:
                run.set(site, add)
        return run.output
