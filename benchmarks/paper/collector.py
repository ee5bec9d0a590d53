"""Recording activations during collection: a TorchRL ``Collector`` on InvertedDoublePendulum-v5 (MuJoCo)
with the shipped PPO actor, ``--frames`` frames, three layers of the actor written into every step.

Libraries: ``rlhook`` (``Recorder`` as the policy: a TensorDictModule writing ``("rlhook", layer)``),
``tdhook`` (its prepared ``ActivationCaching`` as the policy), ``bare`` (the actor alone). One thread: the
environment step dominates.

    python -m benchmarks.paper.collector --lib rlhook [--frames 1000 --seed 42]
"""

from __future__ import annotations

from benchmarks.paper.common import finish, parser, setup

LIBS = ["rlhook", "tdhook", "bare"]
LAYERS = ["module.0.module.act0", "module.0.module.act1", "module.0.module.out"]


def main() -> None:
    p = parser(__doc__, LIBS)
    p.add_argument("--frames", type=int, default=1000)
    p.set_defaults(threads=1)
    args = p.parse_args()
    lib = args.lib

    import torch
    from torchrl.collectors import Collector

    from agents.pendulum.nets import load_agent
    from envs.pendulum import make_env

    setup(args)
    actor, _, stats = load_agent()
    if lib == "rlhook":
        from rlhook.rl import Recorder

        policy = Recorder(actor, LAYERS)
    elif lib == "tdhook":
        from tdhook.latent import ActivationCaching

        policy = ActivationCaching(r"module\.0\.module\.(act0|act1|out)").prepare(actor).__enter__()
    else:
        policy = actor
    env = make_env(seed=args.seed, obs_stats=stats, physics=False)

    def work() -> dict:
        collector = Collector(
            env,
            policy,
            frames_per_batch=args.frames,
            total_frames=args.frames,
            auto_register_policy_transforms=False,
        )
        batches = list(collector)
        collector.shutdown()
        batch = batches[0]
        out = {"action": batch["action"]}
        if lib == "rlhook":
            out.update({name: batch["rlhook", name] for name in LAYERS})
        return out

    finish(args, work, {"frames": args.frames, "torch_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
