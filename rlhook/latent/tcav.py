"""TCAV: concept activation vectors on logistic probes, and conceptual sensitivities (Kim et al., 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase

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
    ):
        if target is None:
            raise ValueError("TCAV needs target=... (what the conceptual sensitivity is of)")
        self.paths, self.target, self.C, self.n_random, self.seed = paths, target, C, n_random, seed

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        hooked.state.modules = hooked.resolve(self.paths)
        hooked.state.cavs = {}

    def _acts(self, hooked: Prepared, td: TensorDictBase) -> dict[str, torch.Tensor]:
        with torch.no_grad(), hooked.run(td) as run:
            saved = {name: run.save((name, module)) for name, module in hooked.state.modules}
        return {n: v.detach() for n, v in run.collect(saved).items()}

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        positive, negative = self.key("positive"), self.key("negative")
        pos = self._acts(hooked, source_td(td, hooked.in_keys, positive).exclude(negative))
        neg = self._acts(hooked, source_td(td, hooked.in_keys, negative).exclude(positive))
        with torch.enable_grad(), hooked.run(td.exclude(positive, negative).copy()) as run:
            run.backward(_single(self.target))
            saved = {name: run.save_grad((name, module)) for name, module in hooked.state.modules}
        grads = {n: g.detach() for n, g in run.collect(saved).items()}
        batch = td.batch_size
        for name in grads:
            xp, xn = pos[name].reshape(len(pos[name]), -1), neg[name].reshape(len(neg[name]), -1)
            X = torch.cat([xp, xn]).double()
            y = torch.cat([torch.ones(len(xp)), torch.zeros(len(xn))]).long()
            cav, acc = self._cav(X, y)
            hooked.state.cavs[name] = cav.reshape(pos[name].shape[1:]).to(pos[name].dtype)
            g = grads[name].reshape(len(grads[name]), -1).double()
            deriv = g @ cav
            td.set(self.key("probe", name, "cav_derivative"), deriv.to(g.dtype).reshape(batch).float())
            td.set(self.key("probe", name, "tcav"), (deriv > 0).double().mean().float().expand(batch))
            td.set(self.key("probe", name, "cav_accuracy"), torch.tensor(acc).float().expand(batch))
            if self.n_random:
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


def _single(target: Target) -> Target:
    """``target`` checked to be one target (TCAV explains one)."""

    def one(out: TensorDictBase) -> torch.Tensor:
        scores = evaluate(target, out)
        if len(scores) != 1:
            raise ValueError("TCAV explains one target; pass a single key or a callable returning a tensor")
        (score,) = scores.values()
        return score

    return one
