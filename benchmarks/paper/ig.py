"""Integrated gradients of two logits (4 and 7) of the paper's MLP, 50 Gauss-Legendre steps, zero baseline,
with the convergence delta.

Libraries: ``rlhook`` (two per-target maps from one call: one shared forward, two backward passes),
``rlhook_sum`` (one map of the summed logits), ``captum`` (one ``attribute`` call on a model wrapped to
output the sum), ``captum_add`` (one call per target), ``tdhook`` (both logits as one summed target), ``bare``
(torch + tensordict imports and one plain forward: the floor).

    python -m benchmarks.paper.ig --lib rlhook [--width 1000 --height 10 --batch 100 --seed 42]
"""

from __future__ import annotations

from benchmarks.paper.common import finish, mlp, parser, setup

LIBS = ["rlhook", "rlhook_sum", "captum", "captum_add", "tdhook", "bare"]
TARGETS = (4, 7)


def main() -> None:
    p = parser(__doc__, LIBS)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--height", type=int, default=10)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    lib, n = args.lib, args.steps
    a, b = TARGETS

    import torch
    from tensordict import TensorDict

    dev = setup(args)
    model = mlp(args.width, args.height).to(dev).eval()
    x = torch.randn(args.batch, args.width, device=dev)
    td = TensorDict(
        {"input": x, ("baseline", "input"): torch.zeros_like(x)}, batch_size=[args.batch], device=dev
    )

    if lib in ("rlhook", "rlhook_sum"):
        from rlhook.attribution import IntegratedGradients

        if lib == "rlhook":
            target = lambda o: TensorDict(
                {"t4": o["output"][:, a], "t7": o["output"][:, b]}, batch_size=o.batch_size
            )
        else:
            target = lambda o: o["output"][:, a] + o["output"][:, b]
        method = IntegratedGradients(target, n_steps=n)

        def work() -> dict:
            with method.prepare(model) as hooked:
                out = hooked(td.clone(False))
            if lib == "rlhook":
                t4, t7 = out["attr", "t4", "input"], out["attr", "t7", "input"]
                return {"t4": t4, "t7": t7, "sum": t4 + t7}
            return {"sum": out["attr", "input"]}

    elif lib in ("captum", "captum_add"):
        from captum.attr import IntegratedGradients as CaptumIG

        def summed(inp: torch.Tensor) -> torch.Tensor:
            y = model(inp)
            return y[:, a] + y[:, b]

        if lib == "captum":
            ig = CaptumIG(summed)

            def work() -> dict:
                attr, _delta = ig.attribute(x, n_steps=n, return_convergence_delta=True)
                return {"sum": attr}

        else:
            ig = CaptumIG(model)

            def work() -> dict:
                t4, _ = ig.attribute(x, target=a, n_steps=n, return_convergence_delta=True)
                t7, _ = ig.attribute(x, target=b, n_steps=n, return_convergence_delta=True)
                return {"t4": t4, "t7": t7, "sum": t4 + t7}

    elif lib == "tdhook":
        from tdhook.attribution import IntegratedGradients as TdIG

        sel = lambda out, _: TensorDict(
            score=out["output"][..., a] + out["output"][..., b], batch_size=out.batch_size
        )
        method = TdIG(init_attr_targets=sel, n_steps=n, multiply_by_inputs=True)

        def work() -> dict:
            with method.prepare(model) as hooked:
                return {"sum": hooked(td.clone(False))["attr", "input"]}

    else:

        def work() -> dict:
            with torch.no_grad():
                return {"output": model(x)}

    finish(args, work)


if __name__ == "__main__":
    main()
