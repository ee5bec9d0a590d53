"""Transformer LRP rules (constant norm scale, constant attention) and relevance patching.

Oracle: conservation. With biases removed, the induction network with both rules applied is linear in its
residual stream, so the relevance ``sum(a * r)`` at every residual site equals the target exactly; either
rule alone (or plain gradients) does not conserve it, which is what each rule is for."""

import pytest
import torch
from tensordict import TensorDict

from agents.induction.net import Config, InductionNet, repeated_tokens
from rlhook import HookedModule
from rlhook.adapters.language import NextTokenLogit
from rlhook.attribution import AttributionPatching, RelevancePatching
from rlhook.attribution.lrp import ConstantAttention, ConstantNormScale
from rlhook.hooks import Hooks, hook_count

PATTERNS = r"blocks\.\d+\.attn\.pattern"
SITES = ["blocks.0@input.0", "blocks.1@input.0", "ln_final@input.0"]


def _net(bias: bool) -> InductionNet:
    torch.manual_seed(0)
    model = (
        InductionNet(Config(vocab=20, length=11, min_repeat=2, max_repeat=5, d_model=16, n_heads=2))
        .double()
        .eval()
    )
    if not bias:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
    return model


def _td(cfg: Config) -> TensorDict:
    ids = repeated_tokens(4, cfg, torch.Generator().manual_seed(0))[0]
    return TensorDict({"input_ids": ids}, batch_size=[4])


def _relevance(model: InductionNet, rules: list) -> tuple[dict, torch.Tensor]:
    target = NextTokenLogit(3)
    with Hooks() as hooks:
        for rule in rules:
            rule.apply(model, hooks)
        hooked = HookedModule(model, in_keys=["input_ids"], out_keys=["logits"])
        with hooked.run(_td(model.cfg)) as run:
            acts = {s: run.save(s) for s in SITES}
            grads = {s: run.save_grad(s) for s in SITES}
            run.backward(target)
    rel = {s: (acts[s].resolve() * grads[s].resolve()).sum((1, 2)) for s in SITES}
    return rel, target(run.output)


def test_both_rules_conserve_relevance_at_every_residual_site():
    model = _net(bias=False)
    rel, f = _relevance(model, [ConstantNormScale(), ConstantAttention(PATTERNS)])
    for site in SITES:
        torch.testing.assert_close(rel[site], f, rtol=1e-9, atol=1e-9)
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "rules", [[], [ConstantNormScale()], [ConstantAttention(PATTERNS)]], ids=["gradient", "norm", "attention"]
)
def test_without_both_rules_relevance_is_not_conserved(rules):
    rel, f = _relevance(_net(bias=False), rules)
    assert (rel["blocks.0@input.0"] - f).abs().max() > 1e-3


def test_rules_keep_the_forward_values_and_leave_no_hook():
    model = _net(bias=True)
    td = _td(model.cfg)
    want = model(td["input_ids"])
    with Hooks() as hooks:
        ConstantNormScale().apply(model, hooks)
        ConstantAttention(PATTERNS).apply(model, hooks)
        torch.testing.assert_close(model(td["input_ids"]), want, rtol=1e-12, atol=1e-12)
    assert hook_count(model) == 0
    norm = torch.nn.RMSNorm(16, eps=1e-5).double()
    x = torch.randn(3, 16, dtype=torch.float64)
    with Hooks() as hooks:
        ConstantNormScale().apply(norm, hooks)
        torch.testing.assert_close(norm(x), torch.nn.functional.rms_norm(x, (16,), norm.weight, 1e-5))
    with pytest.raises(TypeError, match="LayerNorm or RMSNorm"):
        ConstantNormScale("blocks.0.attn.qkv").apply(model, Hooks())
    lstm = torch.nn.Sequential(torch.nn.LSTM(2, 2))  # returns a tuple, not probabilities
    with pytest.raises(TypeError, match="attention probabilities"), Hooks() as hooks:
        ConstantAttention("0").apply(lstm, hooks)
        lstm(torch.randn(1, 3, 2))
    assert hook_count(lstm) == 0


def test_relevance_patching_is_attribution_patching_with_the_rules():
    model = _net(bias=True)
    td = _td(model.cfg)
    td.set(("patched", "input_ids"), td["input_ids"].flip(0))
    target, layers = NextTokenLogit(3), ["blocks.0.attn.z", "blocks.1.attn.z"]
    with AttributionPatching(target, layers=layers).prepare(model, ["input_ids"], ["logits"]) as hooked:
        atp = hooked(td.clone())["attr"]
    with RelevancePatching(target, layers=layers).prepare(model, ["input_ids"], ["logits"]) as hooked:
        plain = hooked(td.clone())["attr"]
    rules = [ConstantNormScale(), ConstantAttention(PATTERNS)]
    with RelevancePatching(target, layers=layers, rules=rules).prepare(
        model, ["input_ids"], ["logits"]
    ) as hooked:
        relp = hooked(td.clone())["attr"]
    for layer in layers:
        torch.testing.assert_close(plain[layer], atp[layer])
    assert not torch.allclose(relp["blocks.0.attn.z"], atp["blocks.0.attn.z"])
    assert hook_count(model) == 0
    with pytest.raises(TypeError, match="canonizers"):
        RelevancePatching(target, layers=layers, rules=["lrp"])
