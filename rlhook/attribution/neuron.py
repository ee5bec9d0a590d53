"""Neuron targets: explain a unit of an internal module's output (captum's Neuron* methods) with any gradient
or perturbation attribution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase

from rlhook.keys import join

__all__ = ["Neuron"]

Unit = int | tuple[int, ...]


class Neuron:
    """A target: unit ``index`` of the output of the module at ``path`` (an element path such as
    ``"lstm@0"`` works too), per example. ``index`` is an int (into the output flattened after the batch dim)
    or a tuple (one index per dim after the batch dim); a list of units gives one map per unit, named by
    ``str(unit)``, from the same forwards and one backward each.

    Every method that evaluates targets through ``rlhook.attribution.base`` (gradients, integrated gradients,
    guided backprop, DeepLift, GradientSHAP, FeatureAblation, Occlusion, the Shapley methods, Lime, ...) saves
    the module's output in the same run and reads it at ``("neuron", path)`` of the outputs.

    >>> IntegratedGradients(target=Neuron("layers.1", 3)), FeatureAblation(target=Neuron("conv1", (0, 2, 2)))
    """

    def __init__(self, path: str, index: Unit | Sequence[Unit]) -> None:
        if not isinstance(path, str):
            raise TypeError(f"Neuron names a module by its path (a str), got {type(path).__name__}")
        self.path = path
        self.many = isinstance(index, list)
        self.units: list[Unit] = list(index) if self.many else [index]  # type: ignore[list-item]
        for u in self.units:
            if not isinstance(u, int | tuple) or (
                isinstance(u, tuple) and not all(isinstance(i, int) for i in u)
            ):
                raise TypeError(f"a unit is an int or a tuple of ints, got {u!r}")

    @property
    def neuron_paths(self) -> tuple[str, ...]:
        """The module paths whose outputs the methods save for this target."""
        return (self.path,)

    def _unit(self, act: torch.Tensor, unit: Unit) -> torch.Tensor:
        where = f"unit {unit!r} of {self.path!r} (output shape {tuple(act.shape)}, batch first)"
        try:
            if isinstance(unit, int):
                return act.reshape(act.shape[0], -1)[:, unit]
            if len(unit) != act.dim() - 1:
                raise IndexError(f"{len(unit)} indices for {act.dim() - 1} dims after the batch dim")
            return act[(slice(None), *unit)]
        except IndexError as exc:
            raise IndexError(f"{where} does not exist: {exc}") from None

    def __call__(self, out: TensorDictBase) -> torch.Tensor | TensorDictBase:
        act = out.get(join("neuron", self.path), None)
        if act is None:
            raise KeyError(
                f"Neuron({self.path!r}) found no ('neuron', {self.path!r}) in the outputs: the method evaluating "
                "it does not save module outputs for targets (use an attribution method of rlhook.attribution)"
            )
        if not self.many:
            return self._unit(act, self.units[0])
        return TensorDict({str(u): self._unit(act, u) for u in self.units}, batch_size=act.shape[:1])

    def __repr__(self) -> str:
        return f"Neuron({self.path!r}, {self.units if self.many else self.units[0]!r})"
