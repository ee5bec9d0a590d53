"""The shipped induction model and the circuit analysis on it (activation patching vs its estimates)."""

import pytest
import torch

from agents.induction import circuit
from agents.induction.net import InductionNet, repeated_tokens
from agents.induction.train import repeat_loss


@pytest.fixture(scope="module")
def model():
    return circuit.load()


def test_checkpoint_is_small_and_learned_the_repeat(model):
    assert circuit.CHECKPOINT.stat().st_size <= 2e6
    ids, _, mask = repeated_tokens(256, model.cfg, torch.Generator().manual_seed(5))
    with torch.no_grad():
        trained = repeat_loss(model, ids, mask).item()
        fresh = repeat_loss(InductionNet(model.cfg).eval(), ids, mask).item()
    assert trained < 0.4 < 3.0 < fresh  # ln(47) = 3.85 is a uniform guess


def test_repeated_tokens_layout(model):
    ids, first, mask = repeated_tokens(32, model.cfg, torch.Generator().manual_seed(0))
    reps = first.sum(-1)
    for b in range(32):
        start = int(first[b].nonzero()[0])
        n = int(reps[b])
        assert torch.equal(ids[b, start : start + n], ids[b, start + n : start + 2 * n])
        assert mask[b].sum() == n - 1 and mask[b, start + n : start + 2 * n - 1].all()
    assert (ids[:, 0] == 0).all() and (ids[:, 1:] != 0).all()


def test_patching_singles_out_the_circuit_heads(model, one_thread):
    """Layer 0: the strongest previous-token head has by far the largest effect, the head that does not look at
    the previous token almost none; layer 1: every head is an induction head, each with a clear effect."""
    td = circuit.batch(64, model.cfg)
    scores, effects = circuit.head_scores(model, td), circuit.patching_effects(model, td)
    assert effects.shape == (2, 4)
    assert int(effects[0].argmax()) == int(scores["previous"][0].argmax())
    assert effects[0].max() > 3 * effects[1].max()
    assert effects[0][int(scores["previous"][0].argmin())] < 0.05
    assert (scores["induction"][1] > 0.5).all() and (effects[1] > 0.1).all()


def test_estimates_against_activation_patching(model, one_thread):
    """Gradients and the LN rule rank the heads like activation patching does; with attention probabilities
    held constant, relevance cannot reach the previous-token heads, which act through the keys of layer 1."""
    from scipy import stats

    td = circuit.batch(32, model.cfg)
    true = circuit.patching_effects(model, td)
    est = {name: circuit.estimates(model, td, rules) for name, rules in circuit.RULE_SETS.items()}
    for name in ("gradient (AtP)", "RelP: LN rule"):
        assert stats.pearsonr(true.flatten(), est[name].flatten())[0] > 0.5, name
    const_attn = est["RelP: LN + attention rule"]
    assert const_attn[0].abs().max() < 0.1 * true[0].max()
