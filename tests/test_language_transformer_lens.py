"""The adapter's hook points against TransformerLens' ``run_with_cache`` on the same weights (a test-only
oracle: a random-init model saved to a temporary folder, booted offline by TransformerLens' bridge)."""

import copy
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
bridge_module = pytest.importorskip("transformer_lens.model_bridge")

from rlhook.adapters.language import heads, hook_points, hooked_lm, token_batch  # noqa: E402
from rlhook.latent import ActivationCaching  # noqa: E402

HEADS = 2


def _tokenizer():
    """A word-level tokenizer over the 40 ids (the bridge wants one; nothing is downloaded)."""
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(40)}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), unk_token="t0", bos_token="t0"
    )


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=HEADS, n_embd=16, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        hidden_size=16,
        intermediate_size=32,
        vocab_size=40,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()


@pytest.mark.parametrize("make", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_hook_points_equal_transformer_lens(make, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = make()
    model.save_pretrained(tmp_path / "model")
    _tokenizer().save_pretrained(tmp_path / "model")
    # the bridge rebuilds the model it is given around its own hook modules: it gets a copy
    bridge = bridge_module.TransformerBridge.boot_transformers(
        str(tmp_path / "model"), hf_model=copy.deepcopy(model)
    )
    ids = torch.randint(1, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    _, tl_cache = bridge.run_with_cache(ids)
    points = hook_points(model)
    names = [n for n in points if n in tl_cache.keys()]
    assert len(names) == len(points), sorted(set(points) - set(names))  # every hook point has its TL twin
    with ActivationCaching(sorted({points[n] for n in names})).prepare(hooked_lm(model)) as hooked:
        out = hooked(token_batch(ids))
    for name in names:
        ours, theirs = out["cache", points[name]], tl_cache[name]
        if name.endswith("hook_z"):
            ours = heads(ours, HEADS)
        torch.testing.assert_close(ours.expand_as(theirs), theirs, msg=name)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
