"""Transformer LRP rules as canonizers (Ali et al., 2022; the constant-attention rule AttnLRP builds on).

Each is a *function-preserving* rewrite for the duration of ``prepare``: forwards give the same values, but
the gradient treats one factor as a constant. Gradient x input through the rewritten model is then LRP
with that rule, and it *conserves* relevance wherever the rest of the network is linear (no bias): the
relevance ``sum(a * grad)`` at any residual-stream site equals the target.

- ``ConstantNormScale``: a LayerNorm / RMSNorm divides by a scale computed from its input; treating that
  scale as a constant makes the norm linear (``y = (x - mean) * gamma / sigma + beta``, ``sigma`` fixed).
- ``ConstantAttention``: attention probabilities (the output of the module at ``paths`` that forms them)
  treated as constants, so relevance flows through the values only (``z = A v``, ``A`` fixed). Without
  ``paths`` on a Hugging Face model, its attention function is swapped for the block for an eager one that
  holds the probabilities constant (the config's ``_attn_implementation`` is restored on exit).

``RelevancePatching`` (``rlhook.attribution``) is attribution patching with these relevances in place of
plain gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rlhook.attribution.lrp.canonizers import Canonizer
from rlhook.extras import require
from rlhook.hooks import Hooks
from rlhook.paths import Path, resolve

__all__ = ["ConstantNormScale", "ConstantAttention", "HF_NAME"]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.RMSNorm) or type(module).__name__.endswith("RMSNorm")


def _norm_with_constant_scale(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.LayerNorm):
        dims = tuple(range(-len(module.normalized_shape), 0))
        centred = x - x.mean(dims, keepdim=True)
        sigma = (centred.pow(2).mean(dims, keepdim=True) + module.eps).sqrt().detach()
        y = centred / sigma
    else:  # RMSNorm, torch's or a Hugging Face one (weight and variance_epsilon / eps)
        eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", None) or 1e-6
        rms = (x.float().pow(2).mean(-1, keepdim=True) + eps).sqrt().detach()
        y = (x.float() / rms).to(x.dtype)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    y = y * weight if weight is not None else y
    return y + bias if bias is not None else y


class ConstantNormScale(Canonizer):
    """The normalising scale of every LayerNorm / RMSNorm (or of those at ``paths``) treated as a constant."""

    def __init__(self, paths: Path | Sequence[Path] | None = None) -> None:
        self.paths = paths

    def apply(self, model: nn.Module, hooks: Hooks) -> None:
        if self.paths is None:
            norms = [m for m in model.modules() if _is_norm(m)]
        else:
            norms = [m for _, m in resolve(model, self.paths)]
            wrong = [type(m).__name__ for m in norms if not _is_norm(m)]
            if wrong:
                raise TypeError(f"ConstantNormScale needs LayerNorm or RMSNorm modules, got {wrong}")
        for module in norms:
            hooks.forward(module, _constant_scale)


def _constant_scale(module: nn.Module, args: tuple, output: Any) -> torch.Tensor:
    # the same value (up to rounding) as the norm's own, with the scale out of the graph
    return _norm_with_constant_scale(module, args[0])


class ConstantAttention(Canonizer):
    """The outputs of the modules at ``paths`` (the ones that return attention probabilities) treated as
    constants: relevance flows through the attention values, not through the queries and keys. ``paths=None``
    on a Hugging Face model (anything with a ``config._attn_implementation``) does it inside every attention
    module through the model's attention-function registry."""

    def __init__(self, paths: Path | Sequence[Path] | None = None) -> None:
        self.paths = paths

    def apply(self, model: nn.Module, hooks: Hooks) -> None:
        if self.paths is None:
            config = getattr(model, "config", None)
            if not hasattr(config, "_attn_implementation"):
                raise TypeError(
                    f"ConstantAttention() without paths works on Hugging Face models; {type(model).__name__} has "
                    "no config._attn_implementation: pass the paths of the modules that return attention "
                    "probabilities"
                )
            _register_hf()
            hooks.setattr(config, "_attn_implementation", HF_NAME)
            return
        for _, module in resolve(model, self.paths):
            hooks.forward(module, _detached)


#: the name under which the constant-probability attention is registered with ``transformers``
HF_NAME = "rlhook_constant_attention"


def _register_hf() -> None:
    transformers = require("transformers", "nlp")
    from transformers.masking_utils import eager_mask

    transformers.AttentionInterface.register(HF_NAME, _constant_probability_attention)
    transformers.AttentionMaskInterface.register(HF_NAME, eager_mask)


def _constant_probability_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention ``(B, H, T, d)`` -> ``((B, T, H, d), probabilities)`` with the probabilities detached
    (grouped key/value heads repeated, an additive mask as HF's eager mask gives it)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = query @ key.transpose(-1, -2) * scale
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    probs = scores.softmax(-1, dtype=torch.float32).to(value.dtype).detach()
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return (probs @ value).transpose(1, 2).contiguous(), probs


def _detached(module: nn.Module, args: tuple, output: Any) -> Any:
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"ConstantAttention needs a module that returns the attention probabilities as a tensor; "
            f"{type(module).__name__} returns {type(output).__name__}"
        )
    return output.detach()
