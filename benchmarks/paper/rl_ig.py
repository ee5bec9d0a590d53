"""Per-target integrated gradients of a TorchRL actor: the log-probability of each of K candidate actions
under a TanhNormal policy, attributed to the observation (32 Gauss-Legendre steps, zero baseline).

Libraries: ``rlhook`` (one call, a TensorDict of K ``ActionLogProb`` targets on the actor's parameter
network: one shared forward, K backward passes), ``captum`` (the actor wrapped as a function of the
observation returning the K log-probabilities, one ``attribute`` call per target), ``bare`` (one forward).

    python -m benchmarks.paper.rl_ig --lib rlhook [--k 4 --batch 256 --seed 42]
"""

from __future__ import annotations

from benchmarks.paper.common import finish, parser, setup

LIBS = ["rlhook", "captum", "bare"]
OBS, ACT, HIDDEN, DEPTH = 64, 8, 256, 3


def main() -> None:
    p = parser(__doc__, LIBS)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=32)
    args = p.parse_args()
    lib, k, n = args.lib, args.k, args.steps

    import torch
    from tensordict import TensorDict
    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torch import nn
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal

    dev = setup(args)
    net = nn.Sequential(
        MLP(OBS, 2 * ACT, num_cells=[HIDDEN] * DEPTH, activation_class=nn.Tanh), NormalParamExtractor()
    )
    params = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    actor = ProbabilisticActor(params, in_keys=["loc", "scale"], distribution_class=TanhNormal).to(dev).eval()
    obs = torch.randn(args.batch, OBS, device=dev)
    actions = torch.rand(k, args.batch, ACT, device=dev) * 1.8 - 0.9  # inside TanhNormal's (-1, 1)
    td = TensorDict(
        {"observation": obs, **{f"action_{i}": actions[i] for i in range(k)}},
        batch_size=[args.batch],
        device=dev,
    )

    if lib == "rlhook":
        from rlhook.attribution import IntegratedGradients
        from rlhook.targets import ActionLogProb, policy_params

        logps = {f"a{i}": ActionLogProb(actor, action_key=f"action_{i}") for i in range(k)}
        target = lambda out: TensorDict(
            {name: f(out) for name, f in logps.items()}, batch_size=out.batch_size
        )
        method = IntegratedGradients(target, n_steps=n, delta=False)

        def work() -> dict:
            with method.prepare(policy_params(actor), in_keys=["observation"]) as hooked:
                out = hooked(td.clone(False))
            return {f"a{i}": out["attr", f"a{i}", "observation"] for i in range(k)}

    elif lib == "captum":
        from captum.attr import IntegratedGradients as CaptumIG

        def log_probs(o: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:  # (N, OBS), (N, K, ACT) -> (N, K)
            loc, scale = net(o)
            return TanhNormal(loc[:, None], scale[:, None]).log_prob(acts)

        ig = CaptumIG(log_probs)
        stacked = actions.transpose(0, 1)  # (B, K, ACT): captum repeats it along the steps with the inputs

        def work() -> dict:
            return {
                f"a{i}": ig.attribute(obs, target=i, n_steps=n, additional_forward_args=(stacked,))
                for i in range(k)
            }

    else:

        def work() -> dict:
            with torch.no_grad():
                return {"loc": params(td.clone(False))["loc"]}

    finish(args, work)


if __name__ == "__main__":
    main()
