"""Closed-loop interventions: steer, patch or ablate units while the agent acts, measured on paired rollouts.

Each seed is played twice, once by the unmodified policy and once with the intervention in place, from the
same initial state (same env seed). The effect is reported per seed and as paired differences of return and
episode length, plus the shift of the action on the *baseline* states (the same observations, so it
isolates the policy change from the change of visited states).

>>> effect = paired_rollouts(make_env, actor, SteeringVectors({"module.0.module.act1": v}, scale=0.5), seeds=range(5))
>>> effect["return_diff_mean"], effect["length_diff_mean"]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.rl.torchrl_compat import exploration

__all__ = ["Ablation", "paired_rollouts"]


class _SetUnits:
    def __init__(self, units: Sequence[int] | None, value: float | torch.Tensor) -> None:
        self.units, self.value = (None if units is None else list(units)), value

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        if self.units is None:
            out[...] = self.value
        else:
            value = (
                self.value[self.units]
                if isinstance(self.value, torch.Tensor) and self.value.dim()
                else self.value
            )
            out[..., self.units] = value
        return out


class Ablation(Method):
    """Set units of module outputs to a value (zero by default, or e.g. their mean over a dataset).

    Args:
        units: ``{path: unit indices along the last dim, or None for the whole output}``.
        value: a number, or a tensor of the layer's width (mean ablation: pass the mean activation).

    Calling the prepared module runs the ablated model and writes its usual outputs.
    """

    def __init__(self, units: Mapping[Path, Sequence[int] | None], value: float | torch.Tensor = 0.0) -> None:
        if not units:
            raise ValueError("Ablation needs at least one {path: units}")
        self.units, self.value = dict(units), value

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        hooked.state.edits = [
            (hooked.resolve_one(p), _SetUnits(u, self.value)) for p, u in self.units.items()
        ]

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        with hooked.run(td) as run:
            for site, edit in hooked.state.edits:
                run.set(site, edit)
        return run.output


def _play(env: Any, policy: Callable, max_steps: int) -> TensorDictBase:
    return env.rollout(max_steps, policy, break_when_any_done=True, auto_cast_to_device=True)


def _summary(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
    return mean, math.sqrt(var / len(values))


def paired_rollouts(
    make_env: Callable[[int], Any],
    policy: TensorDictModuleBase,
    method: Method,
    seeds: Sequence[int],
    *,
    max_steps: int = 1000,
    exploration_type: str = "deterministic",
    action_key: NestedKey = "action",
    reward_key: NestedKey = ("next", "reward"),
) -> dict[str, Any]:
    """Play each seed with and without ``method`` applied to ``policy``; return the paired effect.

    Returns ``{"seeds", "return_base", "return_intervened", "length_base", "length_intervened",
    "return_diff_mean", "return_diff_sem", "length_diff_mean", "length_diff_sem", "action_shift"}``, where
    ``action_shift`` is the mean absolute change of the action on the baseline episodes' states.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("paired_rollouts needs at least one seed")
    rows: dict[str, list[float]] = {k: [] for k in ("rb", "ri", "lb", "li", "shift")}
    with torch.no_grad(), exploration(exploration_type):
        for seed in seeds:
            base = _play(make_env(seed), policy, max_steps)
            with method.prepare(policy) as hooked:
                steered = _play(make_env(seed), hooked, max_steps)
                again = hooked(base.select(*policy.in_keys).clone())
            rows["rb"].append(base.get(reward_key).sum().item())
            rows["ri"].append(steered.get(reward_key).sum().item())
            rows["lb"].append(float(base.numel()))
            rows["li"].append(float(steered.numel()))
            rows["shift"].append((again.get(action_key) - base.get(action_key)).abs().mean().item())
    dr = [i - b for b, i in zip(rows["rb"], rows["ri"])]
    dl = [i - b for b, i in zip(rows["lb"], rows["li"])]
    (drm, drs), (dlm, dls) = _summary(dr), _summary(dl)
    return {
        "seeds": seeds,
        "return_base": rows["rb"],
        "return_intervened": rows["ri"],
        "length_base": rows["lb"],
        "length_intervened": rows["li"],
        "return_diff_mean": drm,
        "return_diff_sem": drs,
        "length_diff_mean": dlm,
        "length_diff_sem": dls,
        "action_shift": sum(rows["shift"]) / len(seeds),
    }
