"""Language models: Hugging Face causal LMs as ``HookedModule``s, hook-point names, token targets.

>>> lm = hooked_lm(hf_model)                                  # input_ids, attention_mask in; logits out
>>> points = hook_points(hf_model)                            # TransformerLens names -> this model's paths
>>> with ActivationCaching(points["blocks.0.hook_resid_post"]).prepare(lm) as hooked:
...     out = hooked(token_batch(ids))

Hook points carry the names TransformerLens gives them, resolved to the model's own module paths (elements
for tuple outputs), so the same analysis runs on GPT-2 and Llama-style models:

==================================  ================================================================
``hook_embed``                      token embedding, ``(B, T, D)``
``hook_pos_embed``                  learned position embedding (GPT-2), ``(1, T, D)`` (shared by the batch)
``blocks.{l}.hook_resid_pre``       residual stream entering block ``l`` (= ``hidden_states[l]``)
``blocks.{l}.hook_attn_out``        attention output added to the residual stream (``attn@0``)
``blocks.{l}.hook_mlp_out``         MLP output added to the residual stream
``blocks.{l}.hook_resid_post``      residual stream leaving block ``l``
``blocks.{l}.attn.hook_pattern``    attention probabilities ``(B, H, T, T)`` (``attn@1``; eager attention)
``blocks.{l}.attn.hook_z``          per-head outputs before the output projection, ``(B, T, H * d_head)``
                                    (the projection's input, ``o_proj@input.0``); ``heads(z, H)`` splits them
``ln_final.hook_normalized``        the final norm's output
==================================  ================================================================

The ``transformers`` package is the optional extra ``rlhook[nlp]``, imported only when a model needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.hooked import HookedModule
from rlhook.keys import get_key

__all__ = [
    "hooked_lm",
    "hook_points",
    "heads",
    "token_batch",
    "NextTokenLogit",
    "TokenLogitDiff",
    "NextTokenLoss",
    "token_attribution",
]

# (blocks, embedding, position embedding, final norm, attention, output projection, mlp) per layout
_LAYOUTS = {
    "gpt2": (
        "transformer.h",
        "transformer.wte",
        "transformer.wpe",
        "transformer.ln_f",
        "attn",
        "attn.c_proj",
        "mlp",
    ),
    "llama": (
        "model.layers",
        "model.embed_tokens",
        None,
        "model.norm",
        "self_attn",
        "self_attn.o_proj",
        "mlp",
    ),
}


def _layout(model: nn.Module) -> tuple:
    names = dict(model.named_modules())
    for layout in _LAYOUTS.values():
        if layout[0] in names and layout[1] in names:
            return layout
    raise TypeError(
        f"{type(model).__name__} has neither GPT-2's layout (transformer.h, transformer.wte) nor a Llama-style "
        "one (model.layers, model.embed_tokens); pass module paths to the methods directly"
    )


def hooked_lm(model: nn.Module, *, attention_mask: bool = True) -> HookedModule:
    """A Hugging Face causal LM as a ``HookedModule``: reads ``"input_ids"`` (and ``"attention_mask"``),
    writes ``"logits"`` ``(B, T, vocab)``; forwards run with ``use_cache=False``. Paths are the model's own."""
    ins = {"input_ids": "input_ids"} | ({"attention_mask": "attention_mask"} if attention_mask else {})
    return HookedModule(model, in_keys=ins, out_keys={"logits": "logits"}, constants={"use_cache": False})


def hook_points(model: nn.Module) -> dict[str, str]:
    """``{TransformerLens hook name: rlhook path}`` for a GPT-2 or Llama-style model (see the module doc)."""
    model = model.model if isinstance(model, HookedModule) else model
    blocks, embed, pos, final, attn, proj, mlp = _layout(model)
    n_layers = len(model.get_submodule(blocks))
    points = {"hook_embed": embed}
    if pos is not None:
        points["hook_pos_embed"] = pos
    config = getattr(model, "config", None)
    eager = getattr(config, "_attn_implementation", "eager") == "eager"
    for layer in range(n_layers):
        block = f"{blocks}.{layer}"
        if layer == 0:
            points["blocks.0.hook_resid_pre"] = "transformer.drop" if pos is not None else embed
        else:
            points[f"blocks.{layer}.hook_resid_pre"] = f"{blocks}.{layer - 1}"
        points[f"blocks.{layer}.hook_attn_out"] = f"{block}.{attn}@0"
        points[f"blocks.{layer}.hook_mlp_out"] = f"{block}.{mlp}"
        points[f"blocks.{layer}.hook_resid_post"] = block
        points[f"blocks.{layer}.attn.hook_z"] = f"{block}.{proj}@input.0"
        if eager:  # sdpa and flash attention never form the probabilities
            points[f"blocks.{layer}.attn.hook_pattern"] = f"{block}.{attn}@1"
    points["ln_final.hook_normalized"] = final
    return points


def heads(z: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``(..., H * d_head)`` per-head outputs (``hook_z``) as ``(..., H, d_head)``."""
    if z.shape[-1] % n_heads:
        raise ValueError(f"the last dim {z.shape[-1]} is not a multiple of n_heads={n_heads}")
    return z.reshape(*z.shape[:-1], n_heads, z.shape[-1] // n_heads)


def token_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TensorDict:
    """A TensorDict of ``input_ids`` ``(B, T)`` and ``attention_mask`` (ones when not given), batch ``[B]``."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    return TensorDict({"input_ids": input_ids, "attention_mask": mask}, batch_size=input_ids.shape[:1])


def _last(out: TensorDictBase, logits: torch.Tensor, position: int | None) -> torch.Tensor:
    """Logits ``(B, vocab)`` at ``position``, or (``None``) at each sequence's last unmasked token."""
    if position is not None:
        return logits[:, position]
    mask = out.get("attention_mask", None)
    if mask is None:
        return logits[:, -1]
    last = (mask.long().sum(-1) - 1).clamp(min=0)
    return logits[torch.arange(logits.shape[0], device=logits.device), last]


class NextTokenLogit:
    """The logit of ``token`` (an id, or a key of per-example ids) predicted at ``position`` (default: each
    sequence's last unmasked token); shape ``(B,)``."""

    def __init__(
        self, token: int | NestedKey, position: int | None = None, key: NestedKey = "logits"
    ) -> None:
        self.token, self.position, self.key = token, position, key

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        logits = _last(out, get_key(out, self.key, what="logits"), self.position)
        if isinstance(self.token, int):
            return logits[:, self.token]
        ids = get_key(out, self.token, what="token ids").long().reshape(-1, 1)
        return logits.gather(-1, ids).squeeze(-1)

    def __repr__(self) -> str:
        return f"NextTokenLogit({self.token!r}, position={self.position})"


class TokenLogitDiff:
    """``logit(a) - logit(b)`` predicted at ``position`` (e.g. the correct minus the wrong name); ``(B,)``."""

    def __init__(
        self, a: int | NestedKey, b: int | NestedKey, position: int | None = None, key: NestedKey = "logits"
    ) -> None:
        self.a, self.b = NextTokenLogit(a, position, key), NextTokenLogit(b, position, key)

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        return self.a(out) - self.b(out)

    def __repr__(self) -> str:
        return f"TokenLogitDiff({self.a.token!r}, {self.b.token!r}, position={self.a.position})"


class NextTokenLoss:
    """Mean next-token cross-entropy of each sequence (masked tokens left out), shape ``(B,)``; ``positions``
    restricts it to the predictions made at those positions (e.g. the second half of a repeated sequence),
    ``weights`` names a key of per-prediction weights ``(B, T - 1)`` (e.g. where a repeat makes the next token
    predictable)."""

    def __init__(
        self,
        positions: Sequence[int] | None = None,
        key: NestedKey = "logits",
        weights: NestedKey | None = None,
    ) -> None:
        self.positions, self.key, self.weights = positions, key, weights

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        logits = get_key(out, self.key, what="logits")[:, :-1]
        ids = get_key(out, "input_ids", what="input")[:, 1:]
        mask = out.get("attention_mask", None)
        weight = torch.ones_like(ids, dtype=logits.dtype) if mask is None else mask[:, 1:].to(logits.dtype)
        if self.positions is not None:
            keep = torch.zeros_like(weight)
            keep[:, list(self.positions)] = 1
            weight = weight * keep
        if self.weights is not None:
            weight = weight * get_key(out, self.weights, what="loss weights").to(weight.dtype)
        nll = -torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return (nll * weight).sum(-1) / weight.sum(-1).clamp(min=1)

    def __repr__(self) -> str:
        return f"NextTokenLoss(positions={self.positions})"


def token_attribution(
    model: nn.Module,
    td: TensorDictBase,
    target,
    *,
    method: str = "ig",
    baseline_token: int = 0,
    n_steps: int = 32,
) -> torch.Tensor:
    """Attribution of ``target`` to each input token ``(B, T)``: layer integrated gradients (``"ig"``) or
    input x gradient (``"ixg"``) at the token embedding, summed over the embedding dim. The IG baseline is
    ``baseline_token`` (a pad or mask token) at every position; IxG compares with a zero embedding."""
    from rlhook.attribution import InputXGradient, IntegratedGradients

    lm = model if isinstance(model, HookedModule) else hooked_lm(model, attention_mask="attention_mask" in td)
    embed = hook_points(lm.model)["hook_embed"]
    td = td.clone(False)
    if method == "ig":
        td.set(("baseline", "input_ids"), torch.full_like(td.get("input_ids"), baseline_token))
        if "attention_mask" in td.keys():  # the baseline keeps the mask: only the tokens change
            td.set(("baseline", "attention_mask"), td.get("attention_mask"))
        attr = IntegratedGradients(target, layers=[embed], n_steps=n_steps)
    elif method == "ixg":
        attr = InputXGradient(target, layers=[embed])
    else:
        raise ValueError(f"method must be 'ig' or 'ixg', not {method!r}")
    with attr.prepare(lm) as hooked:
        out = hooked(td)
    return out.get(("attr", embed)).sum(-1)
