"""Attribution patching (Nanda, 2023; Syed et al., 2023): the first-order estimate of activation patching."""

from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from rlhook.attribution.base import GradientMethod, layer_outputs
from rlhook.keys import MissingKeyError, join, present_keys
from rlhook.methods import Prepared
from rlhook.targets import Target

__all__ = ["AttributionPatching"]


class AttributionPatching(GradientMethod):
    """Estimate, for each module in ``layers=`` (required), how much the target would change if its output
    on the clean inputs were replaced by its output on the ``("patched", k)`` inputs:
    ``(a_patched - a_clean) * d target / d a`` at the clean run, one backward for all modules and targets.

    ``per="unit"`` keeps one estimate per element of the activation (shape of the module output);
    ``per="module"`` sums them to one number per example (shape ``batch``). With ``inputs=[...]`` given
    explicitly, the inputs themselves are patched the same way (``(patched - clean) * gradient``).

    Reads the clean inputs ``k`` and ``("patched", k)`` for every input that has one (inputs without a
    patched version are shared by both runs). Writes ``("attr", layer)`` (or ``("attr", name, layer)`` per
    target), and ``("attr", k)`` for explicit inputs.
    """

    def __init__(
        self, target: Target | None = None, *, per: Literal["unit", "module"] = "unit", **options: object
    ) -> None:
        super().__init__(target, **options)
        if self.options.layers is None and self.options.inputs is None:
            raise ValueError("AttributionPatching needs layers=... (module paths) or inputs=[...]")
        if per not in ("unit", "module"):
            raise ValueError(f"per must be 'unit' or 'module', got {per!r}")
        self.per = per

    def attribute(self, hooked: Prepared, flat: TensorDictBase, keys: list[NestedKey]) -> dict:
        patched = flat.clone(False)
        swapped = []
        for k in hooked.in_keys:
            value = flat.get(join("patched", k), None)
            if value is not None:
                patched.set(k, value)
                swapped.append(k)
        if not swapped:
            present = present_keys(flat)
            raise MissingKeyError(
                f"attribution patching needs ('patched', k) for at least one input k of {hooked.in_keys}; "
                f"the TensorDict has {present}"
            )
        keys = keys if self.options.inputs is not None else []
        layers = hooked.state.layers
        grad_keys = keys or [k for k in hooked.in_keys if torch.is_floating_point(flat.get(k))]
        grads = self.input_gradients(hooked, flat, grad_keys)
        clean = layer_outputs(hooked, flat, layers) if layers else {}
        dirty = layer_outputs(hooked, patched, layers) if layers else {}
        for k in keys:
            clean[k], dirty[k] = flat.get(k), patched.get(k)
        result: dict = {}
        for t, maps in grads.items():
            for name in [n for n, _ in layers if n in maps and n in dirty] + list(keys):
                est = (dirty[name] - clean[name]) * maps[name]
                if self.per == "module":
                    est = est.reshape(est.shape[0], -1).sum(-1)
                result.setdefault(t, {})[name] = est
        return result
