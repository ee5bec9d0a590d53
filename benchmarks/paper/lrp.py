"""LRP (epsilon-plus: Epsilon(1e-6) on every Linear, ReLU passed through) of logit 4 of the paper's MLP.

Libraries: ``rlhook`` (``LRP`` with ``Composite.epsilon_plus``), ``zennit`` (the ``EpsilonPlus`` composite and
its ``Gradient`` attributor, the output relevance set to the logit itself), ``bare`` (one plain forward).
zennit imports torchvision, so this task runs in the bench venv that has a torchvision build (see
``bench.py``), every library in it.

    python -m benchmarks.paper.lrp --lib rlhook [--width 1000 --height 10 --batch 1000 --seed 42]
"""

from __future__ import annotations

from benchmarks.paper.common import finish, mlp, parser, setup

LIBS = ["rlhook", "zennit", "bare"]
TARGET = 4


def main() -> None:
    p = parser(__doc__, LIBS)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--height", type=int, default=10)
    p.add_argument("--batch", type=int, default=1000)
    args = p.parse_args()
    lib = args.lib

    import torch
    from tensordict import TensorDict

    dev = setup(args)
    model = mlp(args.width, args.height).to(dev).eval()
    x = torch.randn(args.batch, args.width, device=dev)
    td = TensorDict({"input": x}, batch_size=[args.batch], device=dev)

    if lib == "rlhook":
        from rlhook.attribution import LRP, Composite

        method = LRP(lambda o: o["output"][:, TARGET], composite=Composite.epsilon_plus(1e-6))

        def work() -> dict:
            with method.prepare(model) as hooked:
                return {"relevance": hooked(td.clone(False))["attr", "input"]}

    elif lib == "zennit":
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlus

        composite = EpsilonPlus(epsilon=1e-6)
        onehot = torch.zeros(args.width, device=dev)
        onehot[TARGET] = 1.0

        def work() -> dict:
            with Gradient(model=model, composite=composite) as attributor:
                _, relevance = attributor(x, lambda out: out * onehot)
            return {"relevance": relevance}

    else:

        def work() -> dict:
            with torch.no_grad():
                return {"output": model(x)}

    finish(args, work)


if __name__ == "__main__":
    main()
