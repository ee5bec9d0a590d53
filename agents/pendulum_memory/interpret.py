"""Interpreting the memory policy: rollouts, memory probes with controls, time-unrolled attribution, and
causal edits of the recurrent state. Used by ``report.py`` (``demo.py``, README figures) and the notebook.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase

from agents.pendulum_memory.nets import ROOT, env_kwargs, make_actor
from envs.pendulum import return_to_go
from envs.pendulum_masked import MASKED_INDEX, STACK_KEY, VELOCITY_NAMES, make_masked_env
from rlhook.attribution import IntegratedGradients, Saliency
from rlhook.latent import probe_with_controls
from rlhook.rl import paired_rollouts
from rlhook.rl.memory import lagged_observations, replay_states, selectivity
from rlhook.rl.state_edit import ReplaceState, ShiftAlong, StateEdit
from rlhook.rl.torchrl_compat import exploration
from rlhook.rl.unrolled import UnrolledPolicy, attribute_over_time, stack_by_lag, time_windows

LSTM_CHECKPOINT = ROOT / "lstm_continued.pt"
FRAMESTACK_CHECKPOINT = ROOT / "framestack_best.pt"


def env_for(actor, state: dict[str, Any], seed: int | None = None, noise_std: float | None = None):
    kw = env_kwargs(state["config"], actor)
    if noise_std is not None:
        kw["noise_std"] = noise_std
    return make_masked_env(seed=seed, obs_stats=state["obs_stats"], **kw)


@torch.no_grad()
def collect(actor, state, seeds, max_steps: int = 1000, kind: str = "random", noise_std: float | None = None):
    """One rollout per seed (``kind``: exploration type), concatenated along time: batch ``[sum T_i]``, each
    episode starting with ``is_init``; ``("next", "return_to_go")`` (gamma 0.99) added per episode."""
    parts = []
    env = env_for(actor, state, None, noise_std)
    with exploration(kind):
        for seed in seeds:
            env.set_seed(seed)
            ep = env.rollout(max_steps, actor, break_when_any_done=True)
            ep.set("return_to_go", return_to_go(ep, gamma=0.99))
            parts.append(ep)
    env.close()
    return torch.cat(parts)


def episode_split(rollout: TensorDictBase, every: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/test rows split by whole episodes (every ``every``-th episode is test), so that the strong
    step-to-step correlation within an episode cannot leak into the score."""
    episode = torch.cumsum(rollout["is_init"].reshape(-1).long(), 0) - 1
    n = int(episode.max()) + 1
    if n < 2:
        raise ValueError("an episode split needs at least 2 episodes in the rollout")
    every = min(every, n)
    test = episode % every == every - 1
    return torch.nonzero(~test).reshape(-1), torch.nonzero(test).reshape(-1)


def memory_features(actor, state, rollout, k: int = 4, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """The trained state next to its controls: a random-init LSTM fed the same sequences, the current
    observation, the last ``k + 1`` observations (linear filter)."""
    torch.manual_seed(seed + 1000)
    random_actor = make_actor(state["config"])
    rand = replay_states(random_actor, rollout)
    nxt = rollout["next"]
    return {
        "trained": {
            "h": nxt["recurrent_state_h"].flatten(1),
            "c": nxt["recurrent_state_c"].flatten(1),
        },
        "random_init": {"h": rand["recurrent_state_h"].flatten(1), "c": rand["recurrent_state_c"].flatten(1)},
        "current_obs": {"obs": rollout["observation"]},
        f"last_{k + 1}_obs": {"obs": lagged_observations(rollout, k)},
    }


def probe_memory(actor, state, rollout, k: int = 4, seed: int = 0) -> dict[str, Any]:
    """Probe rows and selectivity for the masked velocities and the discounted return to go."""
    feats = memory_features(actor, state, rollout, k, seed)
    labels = {name: rollout["physics", name] for name in VELOCITY_NAMES}
    labels["return_to_go"] = rollout["return_to_go"].reshape(-1)
    train, test = episode_split(rollout)
    rows = probe_with_controls(feats, labels, train=train, test=test, alpha=1.0, seed=seed)
    table = [{k: v for k, v in r.items() if k != "probe"} for r in rows]
    return {
        "rows": table,
        "selectivity": selectivity(rows),
        "vs_random_init": selectivity(rows, controls=["random_init"]),
    }


def velocity_direction(rollout, name: str = "w1", alpha: float = 1.0) -> tuple[torch.Tensor, float]:
    """Edit direction for velocity ``name`` in ``cat(h, c)`` (after each step), from ridge readouts of all three
    velocities ``D`` ``[3, 2H]``: the smallest move that raises readout ``name`` by one and leaves the other two
    unchanged is ``u = D^T (D D^T)^-1 e``; returned as ``u / |u|^2`` (the form ``ShiftAlong`` takes), with the
    readout's train R^2."""
    from sklearn.linear_model import Ridge

    x = torch.cat(
        [rollout["next", "recurrent_state_h"].flatten(1), rollout["next", "recurrent_state_c"].flatten(1)], 1
    )
    rows, r2 = [], 0.0
    for n in VELOCITY_NAMES:
        probe = Ridge(alpha=alpha).fit(x.numpy(), rollout["physics", n].numpy())
        rows.append(torch.as_tensor(probe.coef_, dtype=torch.float32))
        if n == name:
            r2 = float(probe.score(x.numpy(), rollout["physics", n].numpy()))
    d = torch.stack(rows)
    e = torch.zeros(len(VELOCITY_NAMES))
    e[VELOCITY_NAMES.index(name)] = 1.0
    u = d.T @ torch.linalg.solve(d @ d.T, e)
    return u / u.pow(2).sum(), r2


#: seconds between two observations (MuJoCo timestep 0.01 x frame skip 5)
DT = 0.05
#: (sin index, cos index) of an angle, or the position index, in the masked observation
_COORDS = {"cart_v": (0,), "w1": (1, 3), "w2": (2, 4)}


@torch.no_grad()
def history_response(actor, state, rollout, name: str, dv: float = 0.5, lags: int = 16) -> float:
    """Mean change of ``loc`` per unit of true velocity ``name``: the observation history of each window is
    rewritten as if that velocity had been ``dv`` higher (past positions or angles moved back by
    ``lag * DT * dv``, the current one unchanged), and the policy re-run over it. What the policy does when a
    velocity really is higher: the sign a probe-direction edit should reproduce."""
    win = time_windows(rollout, lags, obs_key="observation")
    policy = UnrolledPolicy(actor)
    base = policy(win.clone())["loc"]
    loc = state["obs_stats"]["loc"][list(MASKED_INDEX)]
    scale = state["obs_stats"]["scale"][list(MASKED_INDEX)]
    raw = win["observation"] * scale + loc
    back = -(win["window", "lag"].float() * DT * dv)
    idx = _COORDS[name]
    if len(idx) == 1:
        raw[..., idx[0]] += back
    else:
        angle = torch.atan2(raw[..., idx[0]], raw[..., idx[1]]) + back
        raw[..., idx[0]], raw[..., idx[1]] = torch.sin(angle), torch.cos(angle)
    obs = torch.where(win["window", "valid"][..., None], (raw - loc) / scale, win["observation"])
    moved = win.clone()
    moved.set("observation", obs)
    return float((policy(moved)["loc"] - base).mean()) / dv


@torch.no_grad()
def open_loop_shift(actor, rollout, direction: torch.Tensor, delta: float) -> float:
    """Mean change of ``loc`` when the state after each recorded step is moved by ``delta`` along
    ``direction`` (the recorded inputs, one step each)."""
    inputs = rollout.select("observation", "is_init", "recurrent_state_h", "recurrent_state_c").clone()
    base = actor(inputs.clone())["loc"]
    with StateEdit(ShiftAlong(direction, delta)).prepare(actor) as hooked:
        edited = hooked(inputs.clone())["loc"]
    return float((edited - base).mean())


def causal_checks(actor, state, rollout, seeds=range(3), delta: float = 1.0, max_steps: int = 1000) -> dict:
    """Velocity-direction edits (open and closed loop, against a random direction of the same norm) and
    episode-to-episode state patching, with the sign the probe and the policy's sensitivity predict."""
    sens = {n: history_response(actor, state, rollout, n) for n in VELOCITY_NAMES}
    out: dict[str, Any] = {"history_response": sens}
    gen = torch.Generator().manual_seed(0)
    for name in VELOCITY_NAMES:
        d, r2 = velocity_direction(rollout, name)
        rnd = torch.randn(d.shape, generator=gen)
        rnd = rnd * d.norm() / rnd.norm()
        shift = open_loop_shift(actor, rollout, d, delta)
        out[name] = {
            "probe_train_r2": r2,
            "loc_shift_per_unit": shift / delta,
            "predicted_sign": 1 if sens[name] > 0 else -1,
            "sign_agrees": (shift > 0) == (sens[name] > 0),
            "random_direction_loc_shift": open_loop_shift(actor, rollout, rnd, delta) / delta,
        }
    name = max(VELOCITY_NAMES, key=lambda n: abs(out[n]["loc_shift_per_unit"]))
    d, _ = velocity_direction(rollout, name)
    rnd = torch.randn(d.shape, generator=gen)
    rnd = rnd * d.norm() / rnd.norm()
    make = lambda seed: env_for(actor, state, seed)  # noqa: E731
    closed = {}
    for label, direction in ((f"probe_{name}", d), ("random", rnd)):
        for sign in (1.0, -1.0):
            r = paired_rollouts(
                make, actor, StateEdit(ShiftAlong(direction, sign * delta)), seeds, max_steps=max_steps
            )
            closed[f"{label}{'+' if sign > 0 else '-'}"] = {
                k: r[k] for k in ("return_diff_mean", "return_diff_sem", "length_diff_mean", "action_shift")
            }
    out["closed_loop"] = {"velocity": name, "delta": delta, "seeds": list(seeds), "effects": closed}
    out["patching"] = patch_between_episodes(actor, state, rollout)
    return out


@torch.no_grad()
def patch_between_episodes(actor, state, rollout, step: int = 20, pairs: int = 8) -> dict[str, Any]:
    """Give episode B, at step ``step``, episode A's state; the velocity probes say how B's belief moved, the
    policy's response to true velocities (``history_response``) turns that into a predicted change of ``loc``;
    compare its sign with the observed change."""
    starts = torch.nonzero(rollout["is_init"].reshape(-1)).reshape(-1).tolist()
    starts = [s for s, e in zip(starts, [*starts[1:], rollout.numel()]) if e - s > step]
    sens = {n: history_response(actor, state, rollout, n) for n in VELOCITY_NAMES}
    dirs = {n: velocity_direction(rollout, n)[0] for n in VELOCITY_NAMES}
    agree, rows = 0, []
    for i in range(min(pairs, len(starts) - 1)):
        a, b = starts[i] + step, starts[i + 1] + step
        x = lambda t: torch.cat(
            [
                rollout["next", "recurrent_state_h"][t - 1].reshape(-1),
                rollout["next", "recurrent_state_c"][t - 1].reshape(-1),
            ]
        )  # noqa: E731
        belief = {n: float(dirs[n] @ (x(a) - x(b))) for n in VELOCITY_NAMES}
        predicted = sum(sens[n] * belief[n] for n in VELOCITY_NAMES)
        inputs = (
            rollout[b : b + 1]
            .select("observation", "is_init", "recurrent_state_h", "recurrent_state_c")
            .clone()
        )
        base = float(actor(inputs.clone())["loc"])
        patched_in = inputs.clone()
        patched_in["recurrent_state_h"] = rollout["recurrent_state_h"][a : a + 1].clone()
        patched_in["recurrent_state_c"] = rollout["recurrent_state_c"][a : a + 1].clone()
        observed = float(actor(patched_in)["loc"]) - base
        agree += (observed > 0) == (predicted > 0)
        rows.append(
            {"donor": a, "recipient": b, "predicted": predicted, "observed": observed, "belief_shift": belief}
        )
    return {"step": step, "pairs": rows, "sign_agreement": agree / max(1, len(rows))}


def closed_loop_patch(
    actor, state, rollout, donor_seed: int, seed: int, step: int = 20, max_steps: int = 1000
):
    """Return change when episode ``seed`` gets episode ``donor_seed``'s state at ``step`` (paired play)."""
    donor = collect(actor, state, [donor_seed], max_steps, kind="deterministic")
    states = {"h": donor["next", "recurrent_state_h"], "c": donor["next", "recurrent_state_c"]}
    make = lambda s: env_for(actor, state, s)  # noqa: E731
    return paired_rollouts(make, actor, StateEdit(ReplaceState(states, [step])), [seed], max_steps=max_steps)


def lstm_attribution(actor, episode, lags: int = 16, ends=None, n_steps: int = 32) -> dict[str, Any]:
    """Saliency and IG of the taken action's log-prob over windows of ``lags + 1`` steps."""
    sal = attribute_over_time(Saliency(target="action_log_prob", abs=False), actor, episode, lags, ends)
    ig = attribute_over_time(
        IntegratedGradients(target="action_log_prob", n_steps=n_steps), actor, episode, lags, ends
    )
    return {"saliency": sal, "ig": ig}


def framestack_attribution(actor, episode, frames: int) -> dict[str, torch.Tensor]:
    """Saliency of ``loc`` on the ``CatFrames`` stack, as ``[N, frames, 6]`` windows (oldest first)."""
    td = episode.select(STACK_KEY, "step_count").clone()
    with Saliency(target="loc", abs=False, inputs=[STACK_KEY]).prepare(actor) as hooked, torch.enable_grad():
        out = hooked(td)
    attr, valid = stack_by_lag(out["attr", STACK_KEY], frames, episode["step_count"])
    return {"attr": attr, "valid": valid}
