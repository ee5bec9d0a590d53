"""Cache the output of every module of a random-init GPT-2 that runs (149 for GPT-2 small: all but the root,
``transformer``, ``transformer.h`` and the attention-dropout modules that SDPA attention skips), on a batch of
copies of "Hello, world!" (4 tokens, fixed GPT-2 ids: no tokenizer download).

Libraries: ``rlhook`` (``ActivationCaching`` over the explicit list of modules that run, a callback keeping
the first element of tuple outputs), ``nnsight`` (``trace`` with every module's output saved, in the order
they run), ``transformer_lens`` (the v4 ``TransformerBridge`` over the same HF model, ``run_with_cache``: its
own hook points, every one), ``bare`` (one plain forward).

    python -m benchmarks.paper.gpt2 --lib rlhook [--model gpt2 --batch 50 --seed 42]
"""

from __future__ import annotations

import os

from benchmarks.paper.common import finish, parser, setup

LIBS = ["rlhook", "nnsight", "transformer_lens", "bare"]
SIZES = {"gpt2": (768, 12, 12), "gpt2-medium": (1024, 24, 16), "gpt2-large": (1280, 36, 20)}
HELLO_WORLD = [15496, 11, 995, 0]  # GPT-2's ids of "Hello", ",", " world", "!"
BLOCK = 5  # the block whose output the accuracy check compares across libraries


def running_modules(model, ids) -> list[str]:
    """Names of the modules that run on ``ids``, in the order their outputs appear."""
    import torch

    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, args, out, n=n: order.append(n))
        for n, m in model.named_modules()
        if n not in ("", "transformer")
    ]
    with torch.no_grad():
        model(ids[:1])
    for h in handles:
        h.remove()
    return list(dict.fromkeys(order))


def local_tokenizer(folder: str):
    """A word-level tokenizer saved to and loaded from ``folder``: TransformerLens wants one, nothing is
    downloaded, and the benchmark feeds token ids directly."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<unk>": 0, "Hello": 1}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    special = dict(unk_token="<unk>", eos_token="<unk>", bos_token="<unk>", pad_token="<unk>")
    PreTrainedTokenizerFast(tokenizer_object=core, **special).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def main() -> None:
    p = parser(__doc__, LIBS)
    p.add_argument("--model", choices=list(SIZES), default="gpt2")
    p.add_argument("--batch", type=int, default=50)
    args = p.parse_args()
    lib = args.lib
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    dev = setup(args)
    d, layers, heads = SIZES[args.model]
    model = (
        GPT2LMHeadModel(GPT2Config(n_embd=d, n_layer=layers, n_head=heads, use_cache=False)).to(dev).eval()
    )
    ids = torch.tensor([HELLO_WORLD] * args.batch, device=dev)
    names = running_modules(model, ids)
    block = f"transformer.h.{BLOCK}"

    if lib == "rlhook":
        from tensordict import TensorDict

        from rlhook.latent import ActivationCaching

        def pick(name: str, out):
            out = out[0] if isinstance(out, tuple) else out
            # the position embedding's output has batch dim 1: a view broadcast to the batch
            return out.expand(args.batch, *out.shape[1:]) if out.shape[0] != args.batch else out

        method = ActivationCaching(names, callback=pick)
        td = TensorDict({"input_ids": ids}, batch_size=[args.batch], device=dev)

        def work() -> dict:
            with (
                torch.no_grad(),
                method.prepare(model, {"input_ids": "input_ids"}, {"logits": "logits"}) as h,
            ):
                out = h(td.clone(False))
            assert len(out["cache"].keys(True, True)) == len(names)
            return {"logits": out["logits"], "block": out["cache", block]}

    elif lib == "nnsight":
        import nnsight

        traced = nnsight.NNsight(model)

        def envoy(name: str):
            node = traced
            for part in name.split("."):
                node = node[int(part)] if part.isdigit() else getattr(node, part)
            return node

        def work() -> dict:
            with torch.no_grad(), traced.trace(ids):
                saved = nnsight.save([envoy(n).output for n in names])
                logits = traced.output.logits.save()
            assert len(saved) == len(names)
            out = saved[names.index(block)]
            return {"logits": logits, "block": out[0] if isinstance(out, tuple) else out}

    elif lib == "transformer_lens":
        import tempfile

        from transformer_lens.model_bridge import TransformerBridge

        with tempfile.TemporaryDirectory() as folder:  # the bridge reads the tokenizer's folder again
            bridge = TransformerBridge.boot_transformers(
                "gpt2", hf_model=model, tokenizer=local_tokenizer(folder)
            )

        def work() -> dict:
            with torch.no_grad():
                logits, cache = bridge.run_with_cache(ids)
            return {"logits": logits, "block": cache[f"blocks.{BLOCK}.hook_resid_post"]}

    else:

        def work() -> dict:
            with torch.no_grad():
                return {"logits": model(ids).logits}

    finish(args, work, {"modules": len(names)})


if __name__ == "__main__":
    main()
