"""InvertedDoublePendulum-v5 (gymnasium + MuJoCo) as a TorchRL environment.

``make_env`` returns ``TransformedEnv(base, Compose(DoubleToFloat, ObservationNorm, StepCounter))`` where
``base`` is a ``GymEnv`` (or a ``ParallelEnv`` of them). Every reset and step also writes, read straight
from MuJoCo's state and never seen by the policy:

- ``("physics", name)`` for ``name`` in :data:`PHYSICS_NAMES`, float32, shape ``[*batch]``;
- ``("reward_terms", name)`` for ``name`` in :data:`REWARD_TERMS`, float32, shape ``[*batch, 1]``, signed
  as gymnasium reports them (survive >= 0, the two penalties <= 0); they sum to ``"reward"`` (zeros after a
  reset).

Observation layout (9 features, :data:`OBS_NAMES`): cart position, sin/cos of the two hinge angles (``q1``:
cart to first pole, ``q2``: first to second pole, relative), cart velocity and the two angular velocities
(clipped to +-10 by gymnasium) and the cart's constraint force along x (clipped to +-10; zero unless the
cart hits the end of its rail). Both poles are 0.6 m long; the tip is at
``x = cart_x + 0.6 sin q1 + 0.6 sin(q1 + q2)``, height ``y = 0.6 cos q1 + 0.6 cos(q1 + q2)`` (at most 1.2).
Reward per step: ``10 - (0.01 x^2 + (y - 2)^2) - (1e-3 w1^2 + 5e-3 w2^2)``; the episode terminates when
``y <= 1`` and is truncated after 1000 steps, so the best return is about 9,360.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    EnvBase,
    GymEnv,
    ObservationNorm,
    ParallelEnv,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.gym_like import BaseInfoDictReader

ENV_NAME = "InvertedDoublePendulum-v5"
MAX_STEPS = 1000
POLE_LENGTH = 0.6
HEALTHY_TIP_Y = 1.0

OBS_NAMES: tuple[str, ...] = (
    "cart_x",  # 0 cart position on the rail (m), rail range +-1
    "sin_q1",  # 1 sine of the cart-to-first-pole angle
    "sin_q2",  # 2 sine of the first-to-second-pole angle (relative)
    "cos_q1",  # 3
    "cos_q2",  # 4
    "cart_v",  # 5 cart velocity (m/s), clipped to +-10
    "w1",  # 6 angular velocity of q1 (rad/s), clipped to +-10
    "w2",  # 7 angular velocity of q2 (rad/s), clipped to +-10
    "cart_force",  # 8 constraint force on the cart along x, clipped to +-10
)
PHYSICS_NAMES: tuple[str, ...] = ("tip_x", "tip_y", "cart_x", "q1", "q2", "cart_v", "w1", "w2")
REWARD_TERMS: tuple[str, ...] = ("survive", "distance_penalty", "velocity_penalty")
_INFO_NAMES = {
    "survive": "reward_survive",
    "distance_penalty": "distance_penalty",
    "velocity_penalty": "velocity_penalty",
}


class PhysicsReader(BaseInfoDictReader):
    """Info reader writing MuJoCo's unclipped state and the reward terms into each reset/step TensorDict."""

    def __init__(self, gym_env: Any):
        self._unwrapped = gym_env.unwrapped
        f32 = torch.float32
        physics = Composite({k: Unbounded((), dtype=f32) for k in PHYSICS_NAMES}, shape=())
        terms = Composite({k: Unbounded((1,), dtype=f32) for k in REWARD_TERMS}, shape=())
        self._spec = Composite(physics=physics, reward_terms=terms, shape=())

    def __call__(self, info_dict: dict[str, Any], tensordict: TensorDictBase) -> TensorDictBase:
        data = self._unwrapped.data
        tip_x, _, tip_y = (float(v) for v in data.site_xpos[0])
        cart_x, q1, q2 = (float(v) for v in data.qpos[:3])
        cart_v, w1, w2 = (float(v) for v in data.qvel[:3])
        values = dict(tip_x=tip_x, tip_y=tip_y, cart_x=cart_x, q1=q1, q2=q2, cart_v=cart_v, w1=w1, w2=w2)
        for name, value in values.items():
            tensordict.set(("physics", name), torch.tensor(value, dtype=torch.float32))
        for name in REWARD_TERMS:
            value = float(info_dict.get(_INFO_NAMES[name], 0.0)) if info_dict else 0.0
            tensordict.set(("reward_terms", name), torch.tensor([value], dtype=torch.float32))
        return tensordict

    @property
    def info_spec(self) -> Composite:
        return self._spec


def make_base_env(device: str | torch.device = "cpu", physics: bool = True, **gym_kwargs: Any) -> GymEnv:
    """One untransformed ``GymEnv`` (float64 observation of shape ``[9]``), with the physics reader."""
    env = GymEnv(ENV_NAME, device=device, **gym_kwargs)
    if physics:
        env.set_info_dict_reader(PhysicsReader(env._env))
    return env


def make_env(
    seed: int | None = None,
    device: str | torch.device = "cpu",
    parallel: int = 0,
    obs_stats: Mapping[str, torch.Tensor] | None = None,
    physics: bool = True,
    **gym_kwargs: Any,
) -> TransformedEnv:
    """The pendulum as a TorchRL env with float32, normalised observations of shape ``[*batch, 9]``.

    Args:
        seed: seeds the env (a ``ParallelEnv`` seeds worker ``i`` with ``seed + i``).
        device: device of the env's outputs.
        parallel: number of ``ParallelEnv`` workers; ``0`` builds a single env (batch size ``[]``),
            ``n > 0`` a batched env (batch size ``[n]``).
        obs_stats: ``{"loc": [9], "scale": [9]}``; the observation becomes ``(obs - loc) / scale``. ``None``
            keeps the raw values (loc 0, scale 1). Use the stats stored with a checkpoint
            (``agents.pendulum.nets.load_agent``) or :func:`compute_obs_stats`.
        physics: also write the ``("physics", ...)`` and ``("reward_terms", ...)`` entries.
        gym_kwargs: forwarded to ``GymEnv`` (e.g. ``reset_noise_scale``).
    """
    if parallel > 0:
        factory = functools.partial(make_base_env, device=device, physics=physics, **gym_kwargs)
        base: EnvBase = ParallelEnv(parallel, factory, device=device)
    else:
        base = make_base_env(device=device, physics=physics, **gym_kwargs)
    loc, scale = _stats_tensors(obs_stats)
    norm = ObservationNorm(loc=loc, scale=scale, in_keys=["observation"], standard_normal=True)
    env = TransformedEnv(base, Compose(DoubleToFloat(), norm, StepCounter()))
    if seed is not None:
        env.set_seed(seed)
    return env


def _stats_tensors(obs_stats: Mapping[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if obs_stats is None:
        return torch.zeros(len(OBS_NAMES)), torch.ones(len(OBS_NAMES))
    loc = torch.as_tensor(obs_stats["loc"], dtype=torch.float32).clone()
    scale = torch.as_tensor(obs_stats["scale"], dtype=torch.float32).clone()
    if loc.shape != (len(OBS_NAMES),) or scale.shape != (len(OBS_NAMES),):
        raise ValueError(f"obs_stats loc/scale must have shape [9], got {loc.shape} and {scale.shape}")
    return loc, scale


def obs_stats_of(env: TransformedEnv) -> dict[str, torch.Tensor]:
    """The ``{"loc", "scale"}`` (each ``[9]``) used by ``env``'s ObservationNorm."""
    norm = next(t for t in env.transform if isinstance(t, ObservationNorm))
    return {"loc": norm.loc.detach().clone(), "scale": norm.scale.detach().clone()}


def compute_obs_stats(
    num_steps: int = 2000, seed: int = 0, min_scale: float = 1e-3
) -> dict[str, torch.Tensor]:
    """Mean and std (each ``[9]``) of raw observations under uniformly random actions.

    Features whose std is below ``min_scale`` (the constraint force is always 0 under random actions) get
    scale 1, so that a rare non-zero value is not blown up.
    """
    env = make_env(seed=seed, physics=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # random actions come from torch's global generator
        obs = env.rollout(num_steps, break_when_any_done=False)["observation"]
    env.close()
    loc, std = obs.mean(0), obs.std(0)
    scale = torch.where(std < min_scale, torch.ones_like(std), std)
    return {"loc": loc, "scale": scale}


def unnormalize(obs: torch.Tensor, obs_stats: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    """Raw observation ``[..., 9]`` from a normalised one (identity when ``obs_stats`` is None)."""
    if obs_stats is None:
        return obs
    loc, scale = _stats_tensors(obs_stats)
    return obs * scale.to(obs) + loc.to(obs)


def physical_state(
    obs: torch.Tensor, obs_stats: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Physical quantities computed from observations ``[..., 9]``; each output has shape ``[...]``.

    Keys are :data:`PHYSICS_NAMES`. Pass ``obs_stats`` when ``obs`` is normalised. Velocities are those of
    the observation, i.e. clipped to +-10 (the ``("physics", ...)`` entries of the env are not clipped).
    """
    raw = unnormalize(obs, obs_stats)
    cart_x, s1, s2, c1, c2, cart_v, w1, w2 = raw[..., :8].unbind(-1)
    q1 = torch.atan2(s1, c1)
    q2 = torch.atan2(s2, c2)
    s12 = s1 * c2 + c1 * s2  # sin(q1 + q2)
    c12 = c1 * c2 - s1 * s2  # cos(q1 + q2)
    tip_x = cart_x + POLE_LENGTH * (s1 + s12)
    tip_y = POLE_LENGTH * (c1 + c12)
    return dict(tip_x=tip_x, tip_y=tip_y, cart_x=cart_x, q1=q1, q2=q2, cart_v=cart_v, w1=w1, w2=w2)


def _segment_scan(
    td: TensorDictBase, values: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward scan over the last batch dim of ``td`` (time), restarting after each ``("next", "done")``.

    Returns ``(discounted sums of values, steps left in the segment incl. the current one)``, each
    ``[*batch, 1]``.
    """
    if td.batch_dims < 1:
        raise ValueError("expected a trajectory TensorDict with a time dimension (batch dims >= 1)")
    done = td.get(("next", "done")).bool()
    t_dim = td.batch_dims - 1
    values = values.movedim(t_dim, 0)
    done = done.movedim(t_dim, 0)
    out = torch.zeros_like(values)
    steps = torch.zeros_like(values)
    acc = torch.zeros_like(values[0])
    count = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        keep = (~done[t]).to(values.dtype)
        acc = values[t] + gamma * keep * acc
        count = 1 + keep * count
        out[t], steps[t] = acc, count
    return out.movedim(0, t_dim), steps.movedim(0, t_dim)


def return_to_go(td: TensorDictBase, gamma: float = 1.0) -> torch.Tensor:
    """``sum_{k >= t} gamma^(k-t) r_k`` within each episode of a trajectory TensorDict.

    ``td`` has batch shape ``[..., T]`` (time last, as a ``Collector`` or ``env.rollout`` gives) and holds
    ``("next", "reward")`` and ``("next", "done")`` of shape ``[..., T, 1]``; the result has that shape.
    An episode still running at the end of ``td`` is summed up to its last recorded step.
    """
    reward = td.get(("next", "reward")).float()
    return _segment_scan(td, reward, gamma)[0]


def time_to_termination(td: TensorDictBase, not_terminated: float = float("inf")) -> torch.Tensor:
    """Steps left until the episode terminates (the pendulum falls), counting the current step.

    Shape ``[..., T, 1]`` like ``("next", "reward")``: 1 on the step whose ``("next", "terminated")`` is
    set, 2 on the one before, and so on. Steps of an episode that ends by truncation (time limit) or is still
    running at the end of ``td`` get ``not_terminated``.
    """
    reward = td.get(("next", "reward")).float()
    _, steps = _segment_scan(td, torch.zeros_like(reward), 1.0)
    terminated = td.get(("next", "terminated")).bool().to(reward.dtype)
    ends_terminated, _ = _segment_scan(td, terminated, 1.0)
    # the scan of `terminated` sums the flags within a segment; only the segment's last step can carry it
    return torch.where(ends_terminated > 0, steps, torch.full_like(steps, not_terminated))
