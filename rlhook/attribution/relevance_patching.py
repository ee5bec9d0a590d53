"""Relevance patching (RelP): attribution patching with LRP relevances in place of gradients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from rlhook.attribution.attribution_patching import AttributionPatching
from rlhook.attribution.lrp.canonizers import Canonizer
from rlhook.hooks import Hooks
from rlhook.methods import Prepared
from rlhook.targets import Target

__all__ = ["RelevancePatching"]


class RelevancePatching(AttributionPatching):
    """``(a_patched - a_clean) * r`` where ``r`` is the gradient of the target through the model rewritten by
    ``rules`` (e.g. ``[ConstantNormScale(), ConstantAttention(pattern_paths)]``): the LRP
    relevance per unit of activation. Same options, reads and products as ``AttributionPatching``; with no
    rules it *is* attribution patching. The rules hold for the ``prepare`` block (forward values unchanged).
    """

    def __init__(
        self,
        target: Target | None = None,
        *,
        rules: Sequence[Canonizer] = (),
        per: Literal["unit", "module"] = "unit",
        **options: object,
    ) -> None:
        super().__init__(target, per=per, **options)
        bad = [type(r).__name__ for r in rules if not isinstance(r, Canonizer)]
        if bad:
            raise TypeError(f"rules must be canonizers (ConstantNormScale, ConstantAttention ...), got {bad}")
        self.rules = list(rules)

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        super().setup(hooked, hooks)
        for rule in self.rules:
            rule.apply(hooked.model, hooks)
