"""A get-set intervention chain on the paper's MLP (Linear/ReLU modules ``0 .. 2h-1``): get the output of
module 0, set the last Linear's output (module ``-2``) to it, then ``chain`` setters each adding 1 to that
output, then two gets with a reduction applied (mean of module ``-2``, L1 norm of the last ReLU), and the
model output.

Libraries: ``rlhook`` (``HookedModule.run``: ``save``/``set``, a proxy as the first set's value), ``nnsight``
(``trace``, the same program), ``bare`` (one plain forward, no intervention).

    python -m benchmarks.paper.intervene --lib rlhook [--width 1000 --height 10 --batch 1000 --chain 5]
"""

from __future__ import annotations

from benchmarks.paper.common import finish, mlp, parser, setup

LIBS = ["rlhook", "nnsight", "bare"]


def main() -> None:
    p = parser(__doc__, LIBS)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--height", type=int, default=10)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--chain", type=int, default=5)
    args = p.parse_args()
    lib, chain = args.lib, args.chain

    import torch

    dev = setup(args)
    model = mlp(args.width, args.height).to(dev).eval()
    x = torch.randn(args.batch, args.width, device=dev)
    last_linear, last = str(len(model) - 2), str(len(model) - 1)

    if lib == "rlhook":
        from tensordict import TensorDict

        from rlhook import HookedModule

        hooked = HookedModule(model)
        td = TensorDict({"input": x}, batch_size=[args.batch], device=dev)

        def work() -> dict:
            with torch.no_grad(), hooked.run(td.clone(False)) as run:
                first = run.save("0")
                run.set(last_linear, first)
                for _ in range(chain):
                    run.set(last_linear, lambda out: out + 1)
                mid, end = run.save(last_linear), run.save(last)
            return {
                "output": run.output["output"],
                "mean": mid.resolve().mean(-1),
                "l1": end.resolve().abs().sum(-1),
            }

    elif lib == "nnsight":
        import nnsight

        traced = nnsight.NNsight(model)

        def work() -> dict:
            with torch.no_grad(), traced.trace(x):
                first = getattr(traced, "0").output
                getattr(traced, last_linear).output = first
                for _ in range(chain):
                    getattr(traced, last_linear).output = getattr(traced, last_linear).output + 1
                mean = getattr(traced, last_linear).output.mean(-1).save()
                l1 = getattr(traced, last).output.abs().sum(-1).save()
                output = traced.output.save()
            return {"output": output, "mean": mean, "l1": l1}

    else:

        def work() -> dict:
            with torch.no_grad():
                return {"plain_output": model(x)}

    finish(args, work)


if __name__ == "__main__":
    main()
