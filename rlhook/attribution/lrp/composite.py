"""Composites: which LRP rule each module of a model uses, by module type and by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from rlhook.attribution.lrp.rules import AlphaBeta, Epsilon, Flat, Norm, Pass, Rule, ZPlus
from rlhook.paths import Path, resolve

__all__ = ["Composite", "ACTIVATIONS", "LINEAR", "CONV", "POOLING", "Sum"]


class Sum(nn.Module):
    """``Sum()(a, b, ...)``: an addition as a module, so LRP can split its relevance (``Norm`` by default).
    Use it in place of ``a + b`` in a model you write; for existing residual blocks map ``Residual``."""

    def forward(self, *tensors):
        out = tensors[0]
        for t in tensors[1:]:
            out = out + t
        return out


ACTIVATIONS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Dropout,
    nn.Identity,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)
LINEAR = (nn.Linear,)
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
POOLING = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)


class Composite:
    """A rule map: ``names`` (paths relative to the model: dotted, regex or module objects) win over
    ``types`` (checked in order, first ``isinstance`` match). Modules with no rule use plain gradients
    (max pooling, flatten, reshapes ...).

    ``Composite()`` is LRP-epsilon: Linear/Conv ``Epsilon``, activations/dropout/batch-norm ``Pass``, average
    pooling and ``Sum`` ``Norm``. ``Composite.epsilon_plus()`` (dense Epsilon, conv ZPlus),
    ``epsilon_alpha2_beta1()`` and ``epsilon_plus_flat(first)`` follow the usual recipes.
    """

    def __init__(
        self,
        types: Mapping[type | tuple[type, ...], Rule]
        | Sequence[tuple[type | tuple[type, ...], Rule]]
        | None = None,
        names: Mapping[Path, Rule] | None = None,
        *,
        defaults: bool = True,
        rule: Rule | None = None,
    ) -> None:
        pairs = list(types.items()) if isinstance(types, Mapping) else list(types or [])
        if defaults:
            main = rule or Epsilon()
            pairs += [(LINEAR + CONV, main), (ACTIVATIONS, Pass()), (POOLING + (Sum,), Norm())]
        for t, r in pairs:
            if not isinstance(r, Rule):
                raise TypeError(f"the rule for {t} must be an LRP Rule (Epsilon(), Gamma() ...), got {r!r}")
        self.types, self.names = pairs, dict(names or {})

    def rules(self, model: nn.Module) -> list[tuple[str, nn.Module, Rule]]:
        """``[(name, module, rule)]`` for every module of ``model`` that gets a rule."""
        by_id: dict[int, tuple[str, nn.Module, Rule]] = {}
        for name, module in model.named_modules():
            for t, r in self.types:
                if isinstance(module, t):
                    by_id[id(module)] = (name, module, r)
                    break
        for path, r in self.names.items():
            for name, module in resolve(model, path):
                by_id[id(module)] = (name, module, r)
        return list(by_id.values())

    @classmethod
    def epsilon_plus(cls, eps: float = 1e-6) -> Composite:
        return cls([(CONV, ZPlus())], rule=Epsilon(eps))

    @classmethod
    def epsilon_alpha2_beta1(cls, eps: float = 1e-6) -> Composite:
        return cls([(CONV, AlphaBeta(2.0, 1.0))], rule=Epsilon(eps))

    @classmethod
    def epsilon_plus_flat(cls, first: Path, eps: float = 1e-6) -> Composite:
        """``epsilon_plus`` with ``Flat`` on the first layer ``first``."""
        return cls([(CONV, ZPlus())], names={first: Flat()}, rule=Epsilon(eps))

    def __repr__(self) -> str:
        return f"Composite(types={self.types!r}, names={self.names!r})"
