"""``TaskVector``: the difference between two checkpoints, applied to a model with a scale for the block.

>>> tv = TaskVector(base_state_dict, finetuned_state_dict)          # or two modules
>>> with (0.5 * tv).prepare(model) as hooked:                          # model weights += 0.5 * (tuned - base)
...     td = hooked(td)

Task vectors add, subtract and scale (``tv_a + tv_b``, ``-tv``, ``2 * tv``). Only floating entries that differ
in name-for-name matching state dicts take part; integer buffers (BatchNorm counters) are left alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tensordict import TensorDictBase
from torch import nn

from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared

__all__ = ["TaskVector"]

StateLike = nn.Module | Mapping[str, torch.Tensor]


def _state(x: StateLike, what: str) -> dict[str, torch.Tensor]:
    if isinstance(x, nn.Module):
        return {k: v.detach() for k, v in x.state_dict().items()}
    if isinstance(x, Mapping):
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    raise TypeError(f"{what} must be an nn.Module or a state dict, not {type(x).__name__}")


class TaskVector(Method):
    """``scale * (finetuned - base)`` added to the model's matching state-dict entries while prepared.

    Args:
        base, finetuned: modules or state dicts with the same keys and shapes (floating entries are used).
        scale: multiplies the difference when applied.

    ``vector`` holds the unscaled difference ``{name: Tensor}``. Calling the prepared module runs the edited
    model and writes its usual outputs. Weights are restored bitwise on exit.
    """

    edits_weights = True

    def __init__(
        self, base: StateLike | None = None, finetuned: StateLike | None = None, *, scale: float = 1.0
    ):
        self.scale = float(scale)
        if base is None and finetuned is None:
            self.vector: dict[str, torch.Tensor] = {}
            return
        a, b = _state(base, "base"), _state(finetuned, "finetuned")
        if a.keys() != b.keys():
            only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
            raise KeyError(
                f"the checkpoints differ in entries: only in base {only_a[:5]}, only in finetuned {only_b[:5]}"
            )
        vec = {}
        for k in a:
            if not (isinstance(a[k], torch.Tensor) and a[k].is_floating_point()):
                continue
            if a[k].shape != b[k].shape:
                raise ValueError(
                    f"entry {k!r} has shape {tuple(a[k].shape)} in base but {tuple(b[k].shape)} in finetuned"
                )
            vec[k] = b[k].to(a[k].dtype) - a[k]
        self.vector = vec

    @classmethod
    def from_vector(cls, vector: Mapping[str, torch.Tensor], scale: float = 1.0) -> TaskVector:
        tv = cls(scale=scale)
        tv.vector = dict(vector)
        return tv

    # -- arithmetic ----------------------------------------------------------------------------------------------
    def scaled(self) -> dict[str, torch.Tensor]:
        """The difference times ``scale``."""
        return {k: v * self.scale for k, v in self.vector.items()}

    def __add__(self, other: TaskVector) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        a, b = self.scaled(), other.scaled()
        keys = list(dict.fromkeys([*a, *b]))
        return TaskVector.from_vector(
            {k: a[k] + b[k] if k in a and k in b else a.get(k, b.get(k)) for k in keys}
        )

    def __neg__(self) -> TaskVector:
        return TaskVector.from_vector(self.vector, -self.scale)

    def __sub__(self, other: TaskVector) -> TaskVector:
        return self + (-other)

    def __mul__(self, factor: float) -> TaskVector:
        return TaskVector.from_vector(self.vector, self.scale * float(factor))

    __rmul__ = __mul__

    def norm(self) -> torch.Tensor:
        """L2 norm of the scaled difference over all entries."""
        return torch.sqrt(sum((v.double() ** 2).sum() for v in self.scaled().values()))

    def apply_to(self, state: StateLike) -> dict[str, torch.Tensor]:
        """A new state dict: ``state + scale * vector`` (the input is not modified)."""
        s = _state(state, "state")
        missing = [k for k in self.vector if k not in s]
        if missing:
            raise KeyError(f"the task vector has entries the state lacks: {missing[:5]}")
        out = {k: v.clone() for k, v in s.items()}
        for k, v in self.scaled().items():
            out[k] = out[k] + v.to(out[k].dtype)
        return out

    # -- method --------------------------------------------------------------------------------------------------
    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        model = hooked.model
        tensors = dict(model.named_parameters())
        tensors.update(dict(model.named_buffers()))
        missing = [k for k in self.vector if k not in tensors]
        if missing:
            raise KeyError(
                f"the task vector has entries {missing[:5]} that the model lacks; its entries are "
                f"{sorted(tensors)[:8]}"
            )
        with torch.no_grad():
            for k, v in self.scaled().items():
                t = tensors[k]
                if t.shape != v.shape:
                    raise ValueError(
                        f"entry {k!r}: the model has shape {tuple(t.shape)}, the vector {tuple(v.shape)}"
                    )
                t.add_(v.to(device=t.device, dtype=t.dtype))

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        return hooked.model_forward(td)

    def __repr__(self) -> str:
        return f"TaskVector({len(self.vector)} entries, scale={self.scale})"
