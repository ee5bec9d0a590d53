"""RL presets on TorchRL actors and critics: log-probability of the taken action, distribution parameters,
entropy, values and KL to a reference policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from rlhook.keys import get_key, given
from rlhook.targets.core import OutputKey

__all__ = [
    "ActionLogProb",
    "ActionValue",
    "DistParams",
    "Entropy",
    "KLToReference",
    "StateValue",
    "policy_params",
]


def _policy_head(actor: Any) -> Any:
    """The last ``ProbabilisticTensorDictModule`` of a TorchRL/tensordict actor (the part that builds the
    distribution), or ``actor`` itself when it is one."""
    from tensordict.nn import ProbabilisticTensorDictModule

    if isinstance(actor, ProbabilisticTensorDictModule):
        return actor
    heads = [m for m in actor.modules() if isinstance(m, ProbabilisticTensorDictModule)]
    if not heads:
        raise TypeError(
            f"{type(actor).__name__} has no ProbabilisticTensorDictModule to build the policy distribution "
            "from; pass dist_class=... and dist_keys=... instead of an actor"
        )
    return heads[-1]


class _Distribution:
    """Builds the policy distribution from the parameters in an output TensorDict.

    Either ``actor`` (a TorchRL ``ProbabilisticActor`` or any module holding a
    ``ProbabilisticTensorDictModule``: its distribution class, keyword arguments and parameter keys are used)
    or ``dist_class`` with ``dist_keys`` (``{param name: td key}`` or a list of keys named like the
    parameters) and optional ``dist_kwargs``.
    """

    def __init__(
        self,
        actor: Any = None,
        dist_class: type | None = None,
        dist_keys: Sequence[str] | dict[str, NestedKey] | None = None,
        dist_kwargs: dict | None = None,
    ) -> None:
        if (actor is None) == (dist_class is None):
            raise ValueError("pass either actor=... (a TorchRL actor) or dist_class=... with dist_keys=...")
        self.head = _policy_head(actor) if actor is not None else None
        if dist_class is not None and dist_keys is None:
            raise ValueError(f"dist_class={dist_class.__name__} needs dist_keys=..., e.g. ['loc', 'scale']")
        if dist_keys is not None and not isinstance(dist_keys, dict):
            dist_keys = {k if isinstance(k, str) else k[-1]: k for k in dist_keys}
        self.dist_class, self.dist_keys, self.dist_kwargs = dist_class, dist_keys, dict(dist_kwargs or {})

    def __call__(self, out: TensorDictBase) -> torch.distributions.Distribution:
        if self.head is not None:
            for key in self.head.in_keys:
                get_key(out, key, what="distribution parameter")
            return self.head.get_dist(out)
        params = {
            name: get_key(out, key, what="distribution parameter") for name, key in self.dist_keys.items()
        }
        return self.dist_class(**params, **self.dist_kwargs)

    def _describe(self) -> str:
        if self.head is not None:
            return f"actor={self.head.distribution_class.__name__}"
        return f"dist_class={self.dist_class.__name__}, dist_keys={self.dist_keys!r}"


def _seeded_draws(dist: torch.distributions.Distribution, n: int, seed: int) -> torch.Tensor:
    """``n`` reparameterised draws from a fixed seed (the global RNG is left as it was), for Monte-Carlo
    estimates that agree across repeated evaluations."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dist.rsample((n,))


def _taken_action(out: TensorDictBase, key: NestedKey) -> torch.Tensor:
    """The action the batch holds at ``key``, also when the module just overwrote it (see ``keys.given``)."""
    action = given(out, key, what="action")
    if isinstance(action, torch.Tensor) and action.grad_fn is not None:
        raise ValueError(
            f"the action at {key!r} was produced by this forward and the batch gave none before it, so its "
            "log-probability explains nothing; put the taken action in the TensorDict, or prepare the method on "
            "the actor's parameter network (rlhook.targets.policy_params(actor))"
        )
    return action


def policy_params(actor: Any) -> Any:
    """The part of a TorchRL actor that computes the distribution parameters, without the sampling head.

    Prepare attribution methods on it when the TensorDict holds the *taken* action: the full actor samples a
    new action and overwrites it. Returns a ``TensorDictSequential`` sharing the actor's modules.
    """
    from tensordict.nn import ProbabilisticTensorDictModule, TensorDictSequential

    mods = list(getattr(actor, "module", []))
    if not mods or not isinstance(mods[-1], ProbabilisticTensorDictModule):
        raise TypeError(
            f"{type(actor).__name__} is not a probabilistic actor sequence (a ProbabilisticActor or a "
            "ProbabilisticTensorDictSequential ending in a ProbabilisticTensorDictModule)"
        )
    return mods[0] if len(mods) == 2 else TensorDictSequential(*mods[:-1])


class ActionLogProb(_Distribution):
    """``log pi(a|s)`` of the taken action ``a`` (read at ``action_key``) under the policy distribution built
    from the output TensorDict (TanhNormal, Normal, Categorical, OneHotCategorical, MaskedCategorical ...).

    With ``logits`` the policy is categorical over the logits at that key (the action given as indices or as
    one-hot vectors). With ``log_prob_key`` the log-probability is read from that key instead (a ``sample_log_prob`` written
    by the actor: the log-probability of the action the actor sampled in this forward).

    Reads: the distribution parameters (e.g. ``"loc"``, ``"scale"`` or ``"logits"``, ``"action_mask"``) and
    ``action_key``. Returns shape ``batch``.
    """

    def __init__(
        self,
        actor: Any = None,
        *,
        dist_class: type | None = None,
        dist_keys: Sequence[str] | dict[str, NestedKey] | None = None,
        dist_kwargs: dict | None = None,
        action_key: NestedKey = "action",
        log_prob_key: NestedKey | None = None,
        logits: NestedKey | None = None,
    ) -> None:
        self.action_key, self.log_prob_key, self.logits = action_key, log_prob_key, logits
        if logits is not None and (actor is not None or dist_class is not None or log_prob_key is not None):
            raise ValueError("pass logits=... alone: it builds the categorical policy from that key")
        if log_prob_key is None and logits is None:
            super().__init__(actor, dist_class, dist_keys, dist_kwargs)

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        if self.log_prob_key is not None:
            return get_key(out, self.log_prob_key, what="log-prob")
        if self.logits is not None:  # categorical from logits; the action as indices or one-hot vectors
            logp = torch.log_softmax(get_key(out, self.logits, what="logits"), -1)
            a = _taken_action(out, self.action_key)
            a = a.argmax(-1) if a.shape == logp.shape else a
            return logp.gather(-1, a.long().reshape(*logp.shape[:-1], 1)).squeeze(-1)
        dist = super().__call__(out)
        return dist.log_prob(_taken_action(out, self.action_key))

    def __repr__(self) -> str:
        if self.log_prob_key is not None:
            return f"ActionLogProb(log_prob_key={self.log_prob_key!r})"
        if self.logits is not None:
            return f"ActionLogProb(logits={self.logits!r}, action_key={self.action_key!r})"
        return f"ActionLogProb({self._describe()}, action_key={self.action_key!r})"


class DistParams:
    """Distribution parameters as named targets (one map each): ``{"loc": out["loc"], "scale": ...}``.

    Each parameter is summed over its trailing (action) dims; pass ``index=i`` to keep one action dim.
    """

    def __init__(self, keys: Sequence[NestedKey] = ("loc", "scale"), *, index: int | None = None) -> None:
        self.keys, self.index = list(keys), index

    def __call__(self, out: TensorDictBase) -> TensorDictBase:
        values = {}
        for k in self.keys:
            v = get_key(out, k, what="distribution parameter")
            values[k if isinstance(k, str) else ".".join(k)] = v if self.index is None else v[..., self.index]
        return TensorDict(values, batch_size=out.batch_size)

    def __repr__(self) -> str:
        return f"DistParams({self.keys!r}, index={self.index!r})"


class Entropy(_Distribution):
    """Policy entropy ``H(pi(.|s))``, shape ``batch``. Distributions without a closed form (TanhNormal) use a
    reparameterised Monte-Carlo estimate ``-mean_i log pi(a_i|s)`` with ``n_samples`` draws from a fixed
    ``seed`` (so repeated evaluations agree)."""

    def __init__(
        self,
        actor: Any = None,
        *,
        dist_class: type | None = None,
        dist_keys: Sequence[str] | dict[str, NestedKey] | None = None,
        dist_kwargs: dict | None = None,
        n_samples: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(actor, dist_class, dist_keys, dist_kwargs)
        self.n_samples, self.seed = n_samples, seed

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        dist = super().__call__(out)
        try:
            return dist.entropy()
        except NotImplementedError:
            pass
        if not dist.has_rsample:
            raise TypeError(f"{type(dist).__name__} has neither a closed-form entropy nor rsample()")
        samples = _seeded_draws(dist, self.n_samples, self.seed)
        return -dist.log_prob(samples).mean(0)

    def __repr__(self) -> str:
        return f"Entropy({self._describe()})"


def StateValue(key: NestedKey = "state_value") -> OutputKey:  # noqa: N802 - a preset, named like one
    """The critic's state value ``V(s)`` at ``key`` (shape ``batch`` or ``batch + (1,)``)."""
    return OutputKey(key)


class ActionValue:
    """``Q(s, a)`` of the taken action.

    A discrete Q-network writes ``key`` with shape ``batch + (n_actions,)``: the entry of the action at
    ``action_key`` (an index, or a one-hot vector) is taken: the action the batch holds, also when the prepared
    module is a ``QValueActor`` that writes its greedy action over it. ``greedy=True`` explains ``max_a Q(s, a)``
    instead. A continuous critic that already takes the
    action as input writes ``batch`` or ``batch + (1,)``: that value is used as is.
    """

    def __init__(
        self, key: NestedKey = "action_value", *, action_key: NestedKey = "action", greedy: bool = False
    ) -> None:
        self.key, self.action_key, self.greedy = key, action_key, greedy

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        q = get_key(out, self.key, what="action value")
        nb = out.batch_dims
        if q.dim() == nb or (q.dim() == nb + 1 and q.shape[-1] == 1):
            return q.reshape(q.shape[:nb])
        if self.greedy:
            return q.max(-1).values
        action = given(
            out, self.action_key, what="action"
        )  # the batch's action, not one the actor recomputed
        if action.shape == q.shape:  # one-hot
            return (q * action.to(q.dtype)).sum(-1)
        if action.is_floating_point():
            raise TypeError(
                f"action at {self.action_key!r} has shape {tuple(action.shape)} and dtype {action.dtype}; "
                f"expected integer indices of shape {tuple(q.shape[:-1])} or one-hot of shape {tuple(q.shape)}"
            )
        return q.gather(-1, action.long().reshape(*q.shape[:-1], 1)).squeeze(-1)

    def __repr__(self) -> str:
        return f"ActionValue({self.key!r}, action_key={self.action_key!r})"


class KLToReference(_Distribution):
    """``KL(pi(.|s) || pi_ref(.|s))`` per example, shape ``batch``.

    ``reference`` is a module run (without gradients) on the output TensorDict to produce the reference
    parameters (a frozen copy of the actor, or its parameter network), or a prefix under which the output
    TensorDict already holds them (e.g. ``"reference"`` for ``("reference", "loc")``). Without a closed form,
    a Monte-Carlo estimate from ``n_samples`` reparameterised draws (fixed ``seed``) is used.
    """

    def __init__(
        self,
        reference: torch.nn.Module | NestedKey,
        actor: Any = None,
        *,
        dist_class: type | None = None,
        dist_keys: Sequence[str] | dict[str, NestedKey] | None = None,
        dist_kwargs: dict | None = None,
        n_samples: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(actor, dist_class, dist_keys, dist_kwargs)
        self.reference, self.n_samples, self.seed = reference, n_samples, seed

    def _reference_dist(self, out: TensorDictBase) -> torch.distributions.Distribution:
        if isinstance(self.reference, torch.nn.Module):
            with torch.no_grad():
                ref_td = self.reference(out.detach().clone())
            ref_td = out.detach().clone().update(ref_td) if ref_td is not None else ref_td
        else:
            prefix = (self.reference,) if isinstance(self.reference, str) else tuple(self.reference)
            keys = self.head.in_keys if self.head is not None else list(self.dist_keys.values())
            ref_td = out.detach().clone(False)
            for k in keys:
                parts = (k,) if isinstance(k, str) else tuple(k)
                ref_td.set(k, get_key(out, (*prefix, *parts), what="reference parameter").detach())
        return super().__call__(ref_td)

    def __call__(self, out: TensorDictBase) -> torch.Tensor:
        dist, ref = super().__call__(out), self._reference_dist(out)
        try:
            return torch.distributions.kl_divergence(dist, ref)
        except NotImplementedError:
            pass
        samples = _seeded_draws(dist, self.n_samples, self.seed)
        return (dist.log_prob(samples) - ref.log_prob(samples)).mean(0)

    def __repr__(self) -> str:
        return f"KLToReference({self.reference!r}, {self._describe()})"
