"""Hugging Face causal LMs through the adapter, on random-init models built from configs (no download).

Oracles: the model's own ``output_hidden_states`` / ``output_attentions``, a hand-computed per-head split,
and the loss HF computes from ``labels``."""

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from rlhook import HookedModule  # noqa: E402
from rlhook.adapters.language import (  # noqa: E402
    NextTokenLogit,
    NextTokenLoss,
    TokenLogitDiff,
    heads,
    hook_points,
    hooked_lm,
    token_attribution,
    token_batch,
)
from rlhook.attribution import AttributionPatching  # noqa: E402
from rlhook.hooks import hook_count  # noqa: E402
from rlhook.latent import ActivationCaching, ActivationPatching  # noqa: E402
from rlhook.proxy import ProxyError  # noqa: E402
from rlhook.run import NeverRanWarning  # noqa: E402

VOCAB, HEADS = 40, 2


def _gpt2(impl="eager"):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=HEADS, n_embd=16, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation=impl).eval()


def _llama(impl="eager"):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=1,
        hidden_size=16,
        intermediate_size=32,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation=impl).eval()


MODELS = {"gpt2": _gpt2, "llama": _llama}


@pytest.fixture
def ids():
    return torch.randint(1, VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", MODELS)
def test_hook_points_equal_hidden_states_and_attentions(arch, ids, one_thread):
    model = MODELS[arch]()
    points = hook_points(model)
    ref = model(input_ids=ids, output_hidden_states=True, output_attentions=True, use_cache=False)
    base = hook_count(model)  # HF installs its own output-capturing hooks on such a call
    names = [f"blocks.{i}.hook_resid_pre" for i in range(2)] + ["blocks.1.hook_resid_post"]
    names += [f"blocks.{i}.attn.hook_pattern" for i in range(2)] + ["ln_final.hook_normalized"]
    with ActivationCaching([points[n] for n in names]).prepare(hooked_lm(model)) as hooked:
        out = hooked(token_batch(ids))
    cache = {n: out["cache", points[n]] for n in names}
    for i in range(2):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_pre"], ref.hidden_states[i])
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], ref.attentions[i])
    torch.testing.assert_close(cache["ln_final.hook_normalized"], ref.hidden_states[2])  # HF: after the norm
    final = model.get_submodule(points["ln_final.hook_normalized"])
    torch.testing.assert_close(final(cache["blocks.1.hook_resid_post"]), ref.hidden_states[2])
    torch.testing.assert_close(out["logits"], ref.logits)
    assert hook_count(model) == base


@pytest.mark.parametrize("arch", MODELS)
def test_residual_decomposes_into_attention_and_mlp_outputs(arch, ids, one_thread):
    """resid_post = resid_pre + attn_out + mlp_out in every block: the three hooks are the right tensors."""
    model = MODELS[arch]()
    points = hook_points(model)
    kinds = ["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]
    paths = sorted({points[f"blocks.{i}.{k}"] for i in range(2) for k in kinds})
    with ActivationCaching(paths).prepare(hooked_lm(model)) as hooked:
        out = hooked(token_batch(ids))
    for i in range(2):
        c = {k: out["cache", points[f"blocks.{i}.{k}"]] for k in kinds}
        torch.testing.assert_close(
            c["hook_resid_pre"] + c["hook_attn_out"] + c["hook_mlp_out"], c["hook_resid_post"]
        )


@pytest.mark.parametrize("arch", MODELS)
def test_per_head_outputs_recombine_into_the_attention_output(arch, ids, one_thread):
    model = MODELS[arch]()
    points = hook_points(model)
    z_path, out_path = points["blocks.1.attn.hook_z"], points["blocks.1.hook_attn_out"]
    with ActivationCaching([z_path, out_path]).prepare(hooked_lm(model)) as hooked:
        out = hooked(token_batch(ids))
    z = heads(out["cache", z_path], HEADS)  # (B, T, H, d_head)
    proj = model.get_submodule(z_path.split("@")[0])
    weight = proj.weight if isinstance(proj, torch.nn.Linear) else proj.weight.T  # GPT-2's Conv1D is x @ W
    w = weight.reshape(weight.shape[0], HEADS, -1)  # (D, H, d_head)
    per_head = torch.einsum("bthd,ohd->btho", z, w)
    bias = 0 if proj.bias is None else proj.bias
    torch.testing.assert_close(per_head.sum(2) + bias, out["cache", out_path], atol=1e-5, rtol=1e-4)


def test_patching_a_head_through_its_input_element(ids, one_thread):
    """Zeroing head 0 in hook_z by patching from a source whose activation is zero == a hand-run ablation."""
    model = _gpt2()
    z_path = hook_points(model)["blocks.0.attn.hook_z"]
    proj = model.get_submodule(z_path.split("@")[0])

    def ablate(mod, args):
        z = heads(args[0], HEADS).clone()
        z[:, :, 0] = 0
        return (z.flatten(-2),)

    handle = proj.register_forward_pre_hook(ablate)
    try:
        want = model(input_ids=ids, use_cache=False).logits
    finally:
        handle.remove()
    lm = hooked_lm(model, attention_mask=False)
    with lm.run(token_batch(ids).exclude("attention_mask")) as run:
        run.set(z_path, lambda z: heads(z, HEADS).clone().index_fill_(2, torch.tensor([0]), 0).flatten(-2))
    torch.testing.assert_close(run.output["logits"], want)
    assert hook_count(model) == 0


def test_caching_every_module_reports_what_never_ran(ids, one_thread):
    """The regex '.*' on GPT-2 (sdpa): the ModuleList and the attention dropouts never run; they are
    reported, tuples are stored element by element, the (1, T, D) position embedding as it is."""
    model = _gpt2("sdpa")
    assert hook_count(model) == 0
    with ActivationCaching(r".*").prepare(hooked_lm(model)) as hooked:
        with pytest.warns(NeverRanWarning, match=r"transformer\.h'.*attn_dropout"):
            out = hooked(token_batch(ids))
    assert hook_count(model) == 0
    cache = out["cache"]
    assert "transformer.h" not in cache.keys() and "transformer.h.0.attn.attn_dropout" not in cache.keys()
    ref = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    torch.testing.assert_close(cache["transformer.h.0"], ref.hidden_states[1])
    torch.testing.assert_close(cache["transformer.h.0.attn@0"], cache["transformer.h.0.attn.resid_dropout"])
    assert "transformer.h.0.attn@1" not in cache.keys()  # sdpa returns None for the pattern: left out
    torch.testing.assert_close(cache["transformer@last_hidden_state"], ref.hidden_states[2])
    pos = out["cache", "transformer.wpe"]
    assert pos.shape == (1, 6, 16)  # shared by the batch: kept as it is
    torch.testing.assert_close(pos[0], model.transformer.wpe.weight[:6])
    torch.testing.assert_close(cache["transformer.wte"] + pos, cache["transformer.drop"])


def test_a_named_module_that_never_runs_is_still_an_error(ids):
    model = _gpt2("sdpa")
    with ActivationCaching("transformer.h.0.attn.attn_dropout").prepare(hooked_lm(model)) as hooked:
        with pytest.raises(ProxyError, match="attn_dropout.*never ran"):
            hooked(token_batch(ids))
    with ActivationCaching(r"transformer\.h\.\d\.attn\.attn_dropout").prepare(hooked_lm(model)) as hooked:
        with pytest.raises(ProxyError, match="never ran"):  # a pattern none of whose modules ran
            hooked(token_batch(ids))
    assert hook_count(model) == 0


def test_patching_and_attribution_patching_every_block_module(ids, one_thread):
    """Patching all modules of block 0 by regex: the attention's tuple output is swapped whole, dropouts
    that never ran are skipped; attribution patching of the residual stream is exact at its last site."""
    model = _gpt2("sdpa")
    td = token_batch(ids).set(("patched", "input_ids"), ids.flip(0))
    target = TokenLogitDiff(1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NeverRanWarning)
        with ActivationPatching(r"transformer\.h\.0(\..*)?", target).prepare(hooked_lm(model)) as hooked:
            out = hooked(td.clone())
    effects = out["patch_effect"]
    assert "transformer.h.0.attn.attn_dropout" not in effects.keys()
    clean = target(hooked_lm(model)(token_batch(ids)))
    source = target(hooked_lm(model)(token_batch(ids.flip(0))))
    torch.testing.assert_close(
        effects["transformer.h.0"], source - clean
    )  # the whole residual stream of block 0
    torch.testing.assert_close(effects["transformer.h.0.attn"], effects["transformer.h.0.attn.resid_dropout"])
    with AttributionPatching(target, layers=["transformer.h.1"], per="module").prepare(hooked_lm(model)) as h:
        est = h(td.clone())["attr", "transformer.h.1"]
    torch.testing.assert_close(est.shape, torch.Size([3]))
    assert hook_count(model) == 0


def test_targets_against_hf_loss_and_logits(ids, one_thread):
    model = _gpt2()
    lm = hooked_lm(model)
    out = lm(token_batch(ids))
    logits = out["logits"]
    torch.testing.assert_close(NextTokenLogit(5)(out), logits[:, -1, 5])
    torch.testing.assert_close(TokenLogitDiff(5, 7, position=2)(out), logits[:, 2, 5] - logits[:, 2, 7])
    per_seq = NextTokenLoss()(out)
    for b in range(3):
        ref = model(input_ids=ids[b : b + 1], labels=ids[b : b + 1], use_cache=False).loss
        torch.testing.assert_close(per_seq[b], ref)
    weights = torch.zeros(3, 5)
    weights[:, 2:4] = 1  # only the predictions made at positions 2 and 3
    weighted = NextTokenLoss(weights="w")(out.clone().set("w", weights))
    torch.testing.assert_close(weighted, NextTokenLoss(positions=[2, 3])(out))
    nll = -torch.log_softmax(logits[:, 2:4], -1).gather(-1, ids[:, 3:5, None]).squeeze(-1)
    torch.testing.assert_close(weighted, nll.mean(-1))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # right padding: the "last token" of sequence 0 is at position 3
    padded = lm(token_batch(ids, mask))
    torch.testing.assert_close(NextTokenLogit(5)(padded)[0], padded["logits"][0, 3, 5])


def test_token_attribution_completeness(ids, one_thread):
    """Layer IG at the embedding from a pad-token baseline sums to f(x) - f(pad)."""
    model = _gpt2()
    target = NextTokenLogit(3)
    attr = token_attribution(model, token_batch(ids), target, n_steps=64)
    assert attr.shape == ids.shape
    lm = hooked_lm(model)
    gap = target(lm(token_batch(ids))) - target(lm(token_batch(torch.zeros_like(ids))))
    torch.testing.assert_close(attr.sum(-1), gap, atol=2e-3, rtol=2e-2)
    ixg = token_attribution(model, token_batch(ids), target, method="ixg")
    assert ixg.shape == ids.shape and hook_count(model) == 0
    with pytest.raises(ValueError, match="'ig' or 'ixg'"):
        token_attribution(model, token_batch(ids), target, method="lrp")


def test_adapter_errors_name_the_fix():
    with pytest.raises(TypeError, match="GPT-2's layout"):
        hook_points(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="batch, tokens"):
        token_batch(torch.zeros(3, dtype=torch.long))
    assert "blocks.0.attn.hook_pattern" not in hook_points(_gpt2("sdpa"))  # sdpa never forms the pattern
    assert isinstance(hooked_lm(_gpt2()), HookedModule)


@pytest.mark.parametrize("arch", MODELS)
def test_constant_attention_on_hf_models(arch, ids, one_thread):
    """Swapping the attention function keeps every logit, stops the gradient through queries and keys (only
    the values carry it) and restores the model's own attention implementation afterwards."""
    from rlhook.attribution.lrp import ConstantAttention, ConstantNormScale
    from rlhook.hooks import Hooks

    model = MODELS[arch]("sdpa")
    want = model(input_ids=ids, use_cache=False).logits
    attn = model.get_submodule(hook_points(model)["blocks.0.hook_attn_out"].split("@")[0])
    grads = {}
    for name, rules in (("plain", []), ("constant", [ConstantAttention(), ConstantNormScale()])):
        with Hooks() as hooks:
            for rule in rules:
                rule.apply(model, hooks)
            if rules:
                assert model.config._attn_implementation == "rlhook_constant_attention"
            model.zero_grad()
            logits = model(input_ids=ids, use_cache=False).logits
            torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-4)
            logits[:, -1, 3].sum().backward()
        q = attn.c_attn.weight.grad[:, :16] if arch == "gpt2" else attn.q_proj.weight.grad
        v = attn.c_attn.weight.grad[:, 32:] if arch == "gpt2" else attn.v_proj.weight.grad
        grads[name] = tuple(0.0 if g is None else g.abs().max().item() for g in (q, v))  # None: no path
    assert grads["plain"][0] > 1e-4 and grads["constant"][0] == 0 and grads["constant"][1] > 1e-4
    assert model.config._attn_implementation == "sdpa" and hook_count(model) == 0
    model.zero_grad()
    with pytest.raises(TypeError, match="Hugging Face models"), Hooks() as hooks:
        ConstantAttention().apply(torch.nn.Linear(2, 2), hooks)
