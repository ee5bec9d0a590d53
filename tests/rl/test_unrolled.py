"""Time-unrolled attribution equals a hand-unrolled autograd reference, respects episode starts, and chunks."""

import pytest
import torch

pytest.importorskip("torchrl")

from tensordict import TensorDict  # noqa: E402
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential  # noqa: E402
from torch import nn  # noqa: E402
from torchrl.modules import GRUModule, LSTMModule, ProbabilisticActor, TanhNormal  # noqa: E402

from rlhook import hook_count  # noqa: E402
from rlhook.attribution import IntegratedGradients, Saliency  # noqa: E402
from rlhook.attribution.integrated import path_points  # noqa: E402
from rlhook.rl.unrolled import attribute_over_time, stack_by_lag, time_windows  # noqa: E402

F, H, T = 3, 5, 20
INITS = (0, 7, 12)


def make_policy(kind="lstm"):
    torch.manual_seed(0)
    if kind == "lstm":
        rnn = LSTMModule(
            input_size=F,
            hidden_size=H,
            in_keys=["observation", "rs_h", "rs_c"],
            out_keys=["memory", ("next", "rs_h"), ("next", "rs_c")],
        )
    else:
        rnn = GRUModule(
            input_size=F, hidden_size=H, in_keys=["observation", "rs"], out_keys=["memory", ("next", "rs")]
        )
    head = TensorDictModule(
        nn.Sequential(nn.Linear(H, 2), NormalParamExtractor()), ["memory"], ["loc", "scale"]
    )
    return ProbabilisticActor(
        TensorDictSequential(rnn, head),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
        return_log_prob=True,
    )


def state_keys(kind):
    return ["rs_h", "rs_c"] if kind == "lstm" else ["rs"]


def make_rollout(policy, kind="lstm"):
    """Steps the policy one at a time like a collector does; stored states at is_init steps are garbage."""
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(T, F, generator=gen)
    is_init = torch.zeros(T, 1, dtype=torch.bool)
    is_init[list(INITS)] = True
    keys = state_keys(kind)
    state = {k: torch.randn(1, H, generator=gen) for k in keys}  # not zero: the window must zero it itself
    steps = []
    with torch.no_grad():
        for t in range(T):
            td = TensorDict({"observation": obs[t], "is_init": is_init[t], **state}, batch_size=[])
            policy(td)
            action = td["action"].clamp(-0.95, 0.95)
            td.set("action", action)
            steps.append(td.select("observation", "is_init", "action", *keys))
            state = {k: td["next", k] for k in keys}
    return torch.stack(steps)


def reference_log_prob(policy, kind, obs, h0, action):
    """log pi(action | obs[0..L-1]) from (h0) by an explicit loop over the cell equations."""
    rnn = policy.module[0].module[0]
    cell = rnn.lstm if kind == "lstm" else rnn.gru
    w_ih, w_hh, b_ih, b_hh = cell.weight_ih_l0, cell.weight_hh_l0, cell.bias_ih_l0, cell.bias_hh_l0
    if kind == "lstm":
        h, c = h0
        for x in obs:
            i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
    else:
        (h,) = h0
        for x in obs:
            r_i, z_i, n_i = (x @ w_ih.T + b_ih).chunk(3)
            r_h, z_h, n_h = (h @ w_hh.T + b_hh).chunk(3)
            r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
            h = (1 - z) * torch.tanh(n_i + r * n_h) + z * h
    lin, split = policy.module[0].module[1].module
    loc, scale = split(h @ lin.weight.T + lin.bias)  # the head's own scale mapping (a fixed softplus)
    u = torch.atanh(action)
    normal = torch.distributions.Normal(loc, scale)
    return (normal.log_prob(u) - torch.log1p(-action.pow(2))).sum()


def reference_grads(policy, kind, rollout, end, lags):
    """Gradient of the reference log-prob w.r.t. the window's observations, [L, F] (zeros off-episode)."""
    start = max(i for i in INITS if i <= end)
    first = max(end - lags, start)
    obs = rollout["observation"][first : end + 1].clone().requires_grad_(True)
    keys = state_keys(kind)
    h0 = [torch.zeros(H) if first == start else rollout[k][first, 0] for k in keys]
    lp = reference_log_prob(policy, kind, obs, h0, rollout["action"][end])
    (g,) = torch.autograd.grad(lp, obs)
    full = torch.zeros(lags + 1, F)
    full[lags + 1 - len(obs) :] = g
    return full, lp.detach(), obs.detach(), h0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_saliency_equals_hand_unrolled_reference(kind, one_thread):
    policy = make_policy(kind)
    rollout = make_rollout(policy, kind)
    params = {k: v.clone() for k, v in policy.state_dict().items()}
    lags = 5
    out = attribute_over_time(Saliency(target="action_log_prob", abs=False), policy, rollout, lags)
    attr, valid = out["attr", "observation"], out["window", "valid"]
    assert attr.shape == (T, lags + 1, F) and valid.shape == (T, lags + 1)
    for end in range(T):
        ref, lp, _, _ = reference_grads(policy, kind, rollout, end, lags)
        torch.testing.assert_close(attr[end], ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out["action_log_prob"][end], lp, atol=1e-5, rtol=1e-4)
    # steps of an earlier episode (before is_init at 7 or 12) get exactly zero, and are marked invalid
    assert not valid[9, :3].any() and valid[9, 3:].all() and (attr[9, :3] == 0).all()
    assert (attr[9, 3:].abs().sum(-1) > 0).all()
    assert hook_count(policy) == 0
    assert all(torch.equal(v, params[k]) for k, v in policy.state_dict().items())


def test_integrated_gradients_one_path_over_the_window(one_thread):
    policy, kind, lags, n_steps = make_policy(), "lstm", 4, 16
    rollout = make_rollout(policy, kind)
    ends = [5, 10, 19]
    ig = IntegratedGradients(target="action_log_prob", n_steps=n_steps)
    out = attribute_over_time(ig, policy, rollout, lags, ends)
    alphas, weights = path_points(n_steps)
    for n, end in enumerate(ends):
        _, _, obs, h0 = reference_grads(policy, kind, rollout, end, lags)
        total = torch.zeros_like(obs)
        for a, w in zip(alphas.float(), weights.float()):
            x = (a * obs).requires_grad_(True)  # baseline zeros; one straight path for all steps at once
            lp = reference_log_prob(policy, kind, x, h0, rollout["action"][end])
            total += w * torch.autograd.grad(lp, x)[0]
        ref = torch.zeros(lags + 1, F)
        ref[lags + 1 - len(obs) :] = total * obs
        torch.testing.assert_close(out["attr", "observation"][n], ref, atol=1e-5, rtol=1e-4)
    assert out["attr_delta"].abs().max() < 1e-3  # completeness over the whole window


def test_chunked_equals_unchunked(one_thread):
    policy = make_policy()
    rollout = make_rollout(policy)
    sal = Saliency(target="action_log_prob", abs=False)
    whole = attribute_over_time(sal, policy, rollout, 6, window_chunk=1000)
    parts = attribute_over_time(sal, policy, rollout, 6, window_chunk=3)
    inner = attribute_over_time(Saliency(target="loc", abs=False, chunk_size=2), policy, rollout, 6)
    loc = attribute_over_time(Saliency(target="loc", abs=False), policy, rollout, 6, window_chunk=7)
    torch.testing.assert_close(whole["attr", "observation"], parts["attr", "observation"], rtol=0, atol=1e-6)
    torch.testing.assert_close(inner["attr", "observation"], loc["attr", "observation"], rtol=0, atol=1e-6)


def test_batched_rollout_windows_stay_in_their_row():
    policy = make_policy()
    rollout = torch.stack([make_rollout(policy), make_rollout(policy)])  # [2, T]
    rollout["is_init"][1, 0] = False  # row 1 starts mid-episode: its first steps use the stored state
    win = time_windows(rollout, 3, [T, T + 1], state_keys=["rs_h", "rs_c"])
    assert win["window", "valid"].tolist() == [[False, False, False, True], [False, False, True, True]]
    torch.testing.assert_close(win["rs_h"][1, 2], rollout["rs_h"][1, 0])
    assert win["is_init"][:, :, 0].tolist() == [[False, False, False, True], [False, False, True, False]]


def test_bad_input_is_named():
    policy = make_policy()
    rollout = make_rollout(policy)
    with pytest.raises(ValueError, match="lags must be"):
        time_windows(rollout, -1, state_keys=["rs_h", "rs_c"])
    with pytest.raises(KeyError, match="InitTracker"):
        time_windows(rollout.exclude("is_init"), 2, state_keys=["rs_h", "rs_c"])
    with pytest.raises(IndexError, match="flat step indices"):
        time_windows(rollout, 2, [T], state_keys=["rs_h", "rs_c"])
    with pytest.raises(ValueError, match="window_chunk"):
        attribute_over_time(Saliency(target="loc"), policy, rollout, 2, window_chunk=0)
    with pytest.raises(TypeError, match="get_dist"):
        attribute_over_time(Saliency(target="loc"), policy.module[0], rollout, 2)
    with pytest.raises(KeyError, match="target key 'missing_key'.*action_log_prob"):
        attribute_over_time(Saliency(target="missing_key"), policy, rollout, 2)
    assert hook_count(policy) == 0


def test_stack_by_lag_orders_frames_like_windows():
    frames, n = 4, 3
    stacked = torch.arange(n * frames * F, dtype=torch.float32).reshape(n, frames * F)
    view, valid = stack_by_lag(stacked, frames, torch.tensor([0, 2, 9]))
    assert view.shape == (n, frames, F) and torch.equal(view[:, -1], stacked[:, -F:])  # newest frame last
    assert valid.tolist() == [[False, False, False, True], [False, True, True, True], [True] * 4]
    with pytest.raises(ValueError, match="multiple"):
        stack_by_lag(stacked, 5)
