"""Saliency and Input x Gradient."""

from __future__ import annotations

from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import GradientMethod, layer_outputs
from rlhook.methods import Prepared
from rlhook.targets import Target

__all__ = ["Saliency", "InputXGradient"]


class Saliency(GradientMethod):
    """Gradient of the target w.r.t. each input (absolute value unless ``abs=False``).

    Reads the attributed inputs; writes ``("attr", k)`` (or ``("attr", name, k)``), same shape as ``k``.
    """

    aggregate = True

    def __init__(self, target: Target | None = None, *, abs: bool = True, **options: object) -> None:
        super().__init__(target, **options)
        self.abs = abs

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        sums = self.input_gradients(hooked, flat, keys)
        if self.abs:
            sums = {t: {k: g.abs() for k, g in m.items()} for t, m in sums.items()}
        return sums


class InputXGradient(GradientMethod):
    """Input times the gradient of the target w.r.t. it; writes ``("attr", k)``.

    For layers (``layers=[...]``) the layer's output takes the place of the input.
    """

    aggregate = True

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        sums = self.input_gradients(hooked, flat, keys)
        layers = hooked.state.layers
        acts = layer_outputs(hooked, flat, layers) if layers else {}
        return {
            t: {k: g * (acts[k] if k in acts else flat.get(k)) for k, g in m.items()} for t, m in sums.items()
        }
