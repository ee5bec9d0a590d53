"""The induction circuit found three ways: activation patching per head (and position), attribution patching
(gradients) and relevance patching (LRP rule sets), compared by correlation.

Clean inputs hold a repeated random segment ``x, x`` at a random offset; the source inputs replace the first
copy by fresh random tokens, so copying from the earlier occurrence no longer helps. The effect of patching a
head's output ``z`` from the source into the clean run is measured on the loss of the predictions the repeat
makes possible (``NextTokenLoss(weights="loss_mask")``): induction heads and the previous-token heads that
feed them raise it most.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDict

from agents import checkpoints
from agents.induction.net import Config, InductionNet, repeated_tokens
from rlhook.adapters.language import NextTokenLoss
from rlhook.attribution import AttributionPatching, RelevancePatching
from rlhook.attribution.lrp import ConstantAttention, ConstantNormScale
from rlhook.latent import ActivationCaching, ActivationPatching

__all__ = ["CHECKPOINT", "load", "batch", "head_scores", "patching_effects", "estimates", "RULE_SETS"]

CHECKPOINT = Path(__file__).parent / "checkpoint.pt"

#: rule sets compared with plain gradients: name -> canonizers
RULE_SETS = {
    "gradient (AtP)": [],
    "RelP: LN rule": [ConstantNormScale()],
    "RelP: LN + attention rule": [ConstantNormScale(), ConstantAttention(r"blocks\.\d+\.attn\.pattern")],
}


def load(path: Path = CHECKPOINT) -> InductionNet:
    """The shipped (digest-checked) model, in eval mode."""
    state = checkpoints.load(path)
    model = InductionNet(Config(**state["config"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()


def batch(n: int, cfg: Config, seed: int = 0) -> TensorDict:
    """Clean sequences, their ``("patched", "input_ids")`` sources (the first copy replaced by fresh random
    tokens), ``"first"`` (where the first copy is) and ``"loss_mask"`` (the predictable predictions)."""
    gen = torch.Generator().manual_seed(seed)
    ids, first, mask = repeated_tokens(n, cfg, gen)
    src = ids.clone()
    src[first] = torch.randint(1, cfg.vocab, (int(first.sum()),), generator=gen)
    return TensorDict(
        {"input_ids": ids, ("patched", "input_ids"): src, "first": first, "loss_mask": mask}, batch_size=[n]
    )


def target(cfg: Config) -> NextTokenLoss:
    """Loss of the predictions the repeat makes possible, per sequence."""
    return NextTokenLoss(weights="loss_mask")


def _z(layer: int) -> str:
    return f"blocks.{layer}.attn.z"


def head_scores(model: InductionNet, td: TensorDict) -> dict[str, torch.Tensor]:
    """Attention-pattern scores per head ``(L, H)``: ``previous`` = mean attention to the token before,
    ``induction`` = mean attention (in the second copy) to the token after the earlier occurrence."""
    cfg = model.cfg
    paths = [f"blocks.{layer}.attn.pattern" for layer in range(cfg.n_layers)]
    with ActivationCaching(paths).prepare(model, ["input_ids"], ["logits"]) as hooked:
        out = hooked(td.select("input_ids").clone())
    mask = td["loss_mask"].bool()  # (B, T - 1): query positions p whose next token repeats
    b, p = mask.nonzero(as_tuple=True)
    reps = td["first"].sum(-1)[b]  # the repeat length: the earlier occurrence of token p is at p - reps
    prev, ind = [], []
    for path in paths:
        a = out["cache", path]  # (B, H, T, T)
        t = torch.arange(1, cfg.length)
        prev.append(a[:, :, t, t - 1].mean((0, 2)))
        ind.append(a[b, :, p, p - reps + 1].mean(0))
    return {"previous": torch.stack(prev), "induction": torch.stack(ind)}


def patching_effects(model: InductionNet, td: TensorDict, *, per_position: bool = False) -> torch.Tensor:
    """Activation patching: mean effect on the loss of patching each head ``(L, H)``, or per example, head
    and position ``(B, L, H, T)`` (``per_position``: the repeat sits at a different offset in each example)."""
    cfg, tgt = model.cfg, target(model.cfg)
    rows = []
    for layer in range(cfg.n_layers):
        if not per_position:
            method = ActivationPatching(_z(layer), tgt, sweep="units", unit_dim=2)
            with method.prepare(model, ["input_ids"], ["logits"]) as hooked:
                rows.append(hooked(td.clone())["patch_effect", _z(layer)].mean(0))
            continue
        heads = []
        for h in range(cfg.n_heads):
            method = ActivationPatching(_z(layer), tgt, units=[h], unit_dim=2, sweep="positions")
            with method.prepare(model, ["input_ids"], ["logits"]) as hooked:
                heads.append(hooked(td.clone())["patch_effect", _z(layer)])  # (B, T)
        rows.append(torch.stack(heads, 1))  # (B, H, T)
    return torch.stack(rows, 1) if per_position else torch.stack(rows)


def estimates(
    model: InductionNet, td: TensorDict, rules: list, *, per_position: bool = False
) -> torch.Tensor:
    """First-order estimates of ``patching_effects`` (same shape): attribution patching (``rules=[]``) or
    relevance patching with the given LRP rules, one backward for every head and position."""
    cfg = model.cfg
    layers = [_z(layer) for layer in range(cfg.n_layers)]
    method = RelevancePatching(target(cfg), rules=rules, layers=layers) if rules else None
    method = method or AttributionPatching(target(cfg), layers=layers)
    with method.prepare(model, ["input_ids"], ["logits"]) as hooked:
        out = hooked(td.clone())
    per_unit = torch.stack([out["attr", p] for p in layers], 1)  # (B, L, T, H, dh)
    per_head_pos = per_unit.sum(-1).transpose(2, 3)  # (B, L, H, T)
    return per_head_pos if per_position else per_head_pos.sum(-1).mean(0)
