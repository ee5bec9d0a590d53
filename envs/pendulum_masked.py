"""Partially observed InvertedDoublePendulum-v5: the velocities are removed from the observation.

``make_masked_env`` builds on :func:`envs.pendulum.make_env` (``DoubleToFloat, ObservationNorm, StepCounter``)
and appends TorchRL transforms:

- ``RenameTransform(create_copy=True)``: the full normalised 9-d observation stays available at
  ``"full_observation"`` (read by the asymmetric critic during training, never by the policy);
- :class:`SelectFeatures`: ``"observation"`` becomes the 6 features of :data:`MASKED_OBS_NAMES` (cart position,
  sin/cos of both angles, cart constraint force); the three velocities ``cart_v, w1, w2`` are gone;
- :class:`ObservationNoise` (only when ``noise_std > 0``): i.i.d. Gaussian noise on the masked observation;
- ``InitTracker``: ``"is_init"`` marks the first step of each episode (recurrent policies reset on it);
- optionally a ``TensorDictPrimer`` for a recurrent policy's state (``primers``) or ``CatFrames`` stacking the
  last ``frames`` masked observations into ``"observation_stack"`` ``[*batch, frames * 6]`` (oldest first).

The ``("physics", ...)`` entries of the base env hold the true (unclipped) velocities: the labels for probes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tensordict import TensorDictBase
from torchrl.data import TensorSpec, Unbounded
from torchrl.envs import (
    CatFrames,
    InitTracker,
    ObservationTransform,
    RenameTransform,
    Transform,
    TransformedEnv,
)

from envs.pendulum import OBS_NAMES, make_env

VELOCITY_NAMES: tuple[str, ...] = ("cart_v", "w1", "w2")
MASKED_INDEX: tuple[int, ...] = tuple(i for i, n in enumerate(OBS_NAMES) if n not in VELOCITY_NAMES)
MASKED_OBS_NAMES: tuple[str, ...] = tuple(OBS_NAMES[i] for i in MASKED_INDEX)
FULL_OBS_KEY = "full_observation"
STACK_KEY = "observation_stack"


class SelectFeatures(ObservationTransform):
    """Keeps the features ``index`` of the last dim of ``in_keys`` (``[*B, F] -> [*B, len(index)]``)."""

    def __init__(self, index: Sequence[int], in_keys: Sequence[str] = ("observation",)):
        super().__init__(in_keys=list(in_keys), out_keys=list(in_keys))
        if len(index) == 0 or len(set(index)) != len(index):
            raise ValueError(f"index must be a non-empty list of distinct feature indices, got {list(index)}")
        self.register_buffer("index", torch.as_tensor(list(index), dtype=torch.long))

    def _apply_transform(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape[-1] <= int(self.index.max()):
            raise ValueError(
                f"SelectFeatures needs at least {int(self.index.max()) + 1} features, got {obs.shape}"
            )
        return obs.index_select(-1, self.index.to(obs.device))

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict_reset)

    def transform_observation_spec(self, observation_spec: TensorSpec) -> TensorSpec:
        for key in self.in_keys:
            spec = observation_spec[key]
            shape = (*spec.shape[:-1], len(self.index))
            observation_spec[key] = Unbounded(shape=shape, dtype=spec.dtype, device=spec.device)
        return observation_spec


class ObservationNoise(ObservationTransform):
    """Adds ``N(0, std^2)`` noise to ``in_keys`` (same shape); reproducible from ``seed``."""

    def __init__(self, std: float, seed: int = 0, in_keys: Sequence[str] = ("observation",)):
        super().__init__(in_keys=list(in_keys), out_keys=list(in_keys))
        if std < 0:
            raise ValueError(f"noise std must be >= 0, got {std}")
        self.std = float(std)
        self._gen = torch.Generator().manual_seed(int(seed))

    def _apply_transform(self, obs: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(obs.shape, generator=self._gen, dtype=obs.dtype)
        return obs + self.std * noise.to(obs.device)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict_reset)

    def transform_observation_spec(self, observation_spec: TensorSpec) -> TensorSpec:
        return observation_spec


def make_masked_env(
    seed: int | None = None,
    obs_stats: Mapping[str, torch.Tensor] | None = None,
    noise_std: float = 0.0,
    primers: Transform | None = None,
    frames: int = 0,
    physics: bool = True,
    **kwargs,
) -> TransformedEnv:
    """The pendulum with masked velocities; ``"observation"`` is ``[*batch, 6]`` (see the module docstring).

    Args:
        seed: env seed (also seeds the observation noise).
        obs_stats: normalisation stats of the full 9-d observation (as for ``make_env``).
        noise_std: std of Gaussian noise added to the normalised masked observation (0: none).
        primers: e.g. ``lstm_module.make_tensordict_primer()`` for a recurrent policy.
        frames: ``> 0`` appends ``CatFrames(frames)`` writing ``"observation_stack"``.
        physics, kwargs: forwarded to ``envs.pendulum.make_env``.
    """
    if noise_std < 0:
        raise ValueError(f"noise std must be >= 0, got {noise_std}")
    env = make_env(seed=None, obs_stats=obs_stats, physics=physics, **kwargs)
    env.append_transform(RenameTransform(["observation"], [FULL_OBS_KEY], create_copy=True))
    env.append_transform(SelectFeatures(MASKED_INDEX))
    if noise_std > 0:
        env.append_transform(ObservationNoise(noise_std, seed=0 if seed is None else seed))
    env.append_transform(InitTracker())
    if primers is not None:
        env.append_transform(primers)
    if frames > 0:
        env.append_transform(CatFrames(N=frames, dim=-1, in_keys=["observation"], out_keys=[STACK_KEY]))
    if seed is not None:
        env.set_seed(seed)
    return env
