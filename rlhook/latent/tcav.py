"""TCAV: concept activation vectors on logistic probes, and conceptual sensitivities (Kim et al., 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase

from rlhook.extras import require
from rlhook.hooks import Hooks
from rlhook.keys import source_td
from rlhook.latent.estimators import LogisticProbe
from rlhook.latent.scores import accuracy
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.targets import Target, evaluate

__all__ = ["TCAV"]


class TCAV(Method):
    """Concept activation vectors (Kim et al., 2018) on logistic probes, and TCAV scores.

    For each module ``name`` at ``paths``, a ``LogisticProbe`` separates the activations of the concept
    examples ``("positive", k)`` from those of the random / counter examples ``("negative", k)``; the CAV is
    its unit-norm weight vector. The conceptual sensitivity of each input example is the derivative of
    ``target`` along the CAV at that module, ``grad_h target . cav``; the TCAV score is the fraction of
    examples where it is positive.

    Reads the inputs, ``("positive", k)``, ``("negative", k)``. Writes ``("probe", name, "cav_derivative")``
    (per example), ``("probe", name, "tcav")`` and ``("probe", name, "cav_accuracy")`` (scalars expanded over
    the batch). the prepared module's ``state.cavs[name]`` keeps each CAV (shape of the activation without batch). With
    ``n_random > 0`` it also writes ``("probe", name, "tcav_random")``: the mean score of CAVs fitted on
    shuffled concept labels (a chance baseline, near 0.5 for a concept the module does not encode).

    Concept sets of any size (not tied to the batch): ``concept`` holds the concept examples and ``randoms``
    several random example sets (each a TensorDict of inputs, or a tensor for a single input key), read
    instead of ``("positive", k)`` / ``("negative", k)``. One CAV is fitted per random set (concept vs random
    set ``i``) and one random-vs-random control per set (random set ``i`` vs ``i + 1``); with two or more random
    sets a two-sided Welch t-test compares the concept's scores with the controls' (Kim et al., 2018, sec. 3.2).
    Writes, besides the keys above (``tcav``, ``cav_accuracy``: means over the random sets;
    ``cav_derivative``: the mean derivative), ``("probe", name, "tcav_runs")`` and
    ``("probe", name, "tcav_controls")`` (``(*batch, n_sets)``, the scores per random set) and
    ``("probe", name, "tcav_p_value")``; ``state.cav_runs[name]`` stacks the CAVs.
    """

    keys = {"positive": "positive", "negative": "negative", "probe": "probe"}

    def __init__(
        self,
        paths: Path | Sequence[Path],
        target: Target,
        *,
        C: float = 1.0,
        n_random: int = 0,
        seed: int = 0,
        concept: TensorDictBase | torch.Tensor | None = None,
        randoms: Sequence[TensorDictBase | torch.Tensor] | None = None,
    ):
        if target is None:
            raise ValueError("TCAV needs target=... (what the conceptual sensitivity is of)")
        if (concept is None) != (randoms is None) or (randoms is not None and len(randoms) < 1):
            raise ValueError(
                "give both concept=... and randoms=[...] (one or more random example sets), or neither and put "
                "('positive', k) / ('negative', k) in the TensorDict"
            )
        self.paths, self.target, self.C, self.n_random, self.seed = paths, target, C, n_random, seed
        self.concept, self.randoms = concept, None if randoms is None else list(randoms)

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        hooked.state.modules = hooked.resolve(self.paths)
        hooked.state.cavs, hooked.state.cav_runs = {}, {}

    def _acts(self, hooked: Prepared, td: TensorDictBase) -> dict[str, torch.Tensor]:
        with torch.no_grad(), hooked.run(td) as run:
            saved = {name: run.save((name, module)) for name, module in hooked.state.modules}
        return {n: v.detach() for n, v in run.collect(saved).items()}

    def _example_acts(self, hooked: Prepared, examples: object, what: str) -> dict[str, torch.Tensor]:
        if isinstance(examples, torch.Tensor):
            if len(hooked.in_keys) != 1:
                raise TypeError(
                    f"{what} is a tensor but the model reads {hooked.in_keys}; pass a TensorDict with those keys"
                )
            examples = TensorDict({hooked.in_keys[0]: examples}, batch_size=examples.shape[:1])
        if not isinstance(examples, TensorDictBase) or examples.batch_dims != 1 or not len(examples):
            raise TypeError(f"{what} must be a non-empty tensor or TensorDict of examples (one batch dim)")
        parts = [self._acts(hooked, chunk) for chunk in examples.split(512)]
        return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        positive, negative = self.key("positive"), self.key("negative")
        if self.concept is not None:
            pos = self._example_acts(hooked, self.concept, "concept")
            negs = [self._example_acts(hooked, r, f"randoms[{i}]") for i, r in enumerate(self.randoms)]
        else:
            pos = self._acts(hooked, source_td(td, hooked.in_keys, positive).exclude(negative))
            negs = [self._acts(hooked, source_td(td, hooked.in_keys, negative).exclude(positive))]
        with torch.enable_grad(), hooked.run(td.exclude(positive, negative).copy()) as run:
            run.backward(_single(self.target))
            saved = {name: run.save_grad((name, module)) for name, module in hooked.state.modules}
        grads = {n: g.detach() for n, g in run.collect(saved).items()}
        batch = td.batch_size
        for name in grads:
            g = grads[name].reshape(len(grads[name]), -1).double()
            flat = [n[name].reshape(len(n[name]), -1).double() for n in negs]
            xp = pos[name].reshape(len(pos[name]), -1).double()
            cavs, accs = zip(*(self._cav(*_pair(xp, xn)) for xn in flat))
            hooked.state.cavs[name] = cavs[0].reshape(pos[name].shape[1:]).to(pos[name].dtype)
            hooked.state.cav_runs[name] = (
                torch.stack(cavs).reshape(len(cavs), *pos[name].shape[1:]).to(pos[name].dtype)
            )
            derivs = torch.stack([g @ c for c in cavs])  # (n_sets, batch)
            runs = (derivs > 0).double().mean(1)
            td.set(self.key("probe", name, "cav_derivative"), derivs.mean(0).reshape(batch).float())
            td.set(self.key("probe", name, "tcav"), runs.mean().float().expand(batch))
            td.set(
                self.key("probe", name, "cav_accuracy"),
                torch.tensor(sum(accs) / len(accs)).float().expand(batch),
            )
            if self.randoms is not None:
                m = len(flat)
                controls = torch.tensor(
                    [
                        float(((g @ self._cav(*_pair(flat[i], flat[(i + 1) % m]))[0]) > 0).double().mean())
                        for i in range(m)
                    ]
                    if m > 1
                    else [float("nan")]
                )
                td.set(self.key("probe", name, "tcav_runs"), runs.float().expand(*batch, m))
                td.set(
                    self.key("probe", name, "tcav_controls"), controls.float().expand(*batch, len(controls))
                )
                td.set(
                    self.key("probe", name, "tcav_p_value"), _p_value(runs, controls).float().expand(batch)
                )
            if self.n_random:
                X, y = _pair(xp, flat[0])
                gen = torch.Generator().manual_seed(self.seed)
                rand = []
                for _ in range(self.n_random):
                    rcav, _ = self._cav(X, y[torch.randperm(len(y), generator=gen)])
                    rand.append(float(((g @ rcav) > 0).double().mean()))
                td.set(
                    self.key("probe", name, "tcav_random"),
                    torch.tensor(sum(rand) / len(rand)).float().expand(batch),
                )
        return td

    def _cav(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        probe = LogisticProbe(self.C).fit(X, y)
        w = probe.coef_[:, 0]
        return w / w.norm().clamp_min(1e-12), accuracy(y, probe.predict(X))


def _pair(xp: torch.Tensor, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked examples and 0/1 labels (1: the first set)."""
    return torch.cat([xp, xn]), torch.cat([torch.ones(len(xp)), torch.zeros(len(xn))]).long()


def _p_value(scores: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """Two-sided Welch t-test of the concept's TCAV scores against the random controls' (NaN below 2 each)."""
    if len(scores) < 2 or len(controls) < 2:
        return torch.tensor(float("nan"))
    stats = require("scipy.stats", "probe")
    a, b = scores.double().numpy(), controls.double().numpy()
    if a.std() == 0 and b.std() == 0:
        return torch.tensor(1.0 if a.mean() == b.mean() else 0.0)
    return torch.tensor(float(stats.ttest_ind(a, b, equal_var=False).pvalue))


def _single(target: Target) -> Target:
    """``target`` checked to be one target (TCAV explains one)."""

    def one(out: TensorDictBase) -> torch.Tensor:
        scores = evaluate(target, out)
        if len(scores) != 1:
            raise ValueError("TCAV explains one target; pass a single key or a callable returning a tensor")
        (score,) = scores.values()
        return score

    return one
