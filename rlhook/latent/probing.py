"""``Probing``: linear probes from the activations of several modules at once (and module pairs) to labels.

Activations come from ``("cache", name)`` in the TensorDict when it has them (written by
``ActivationCaching``, a ``Recorder`` or a replay buffer): no model is needed then. Otherwise they come from one
forward of the prepared model. Estimators live in ``rlhook.latent.estimators``, scores in
``rlhook.latent.scores``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.hooks import Hooks
from rlhook.keys import get_key
from rlhook.latent.estimators import (
    BilinearProbe,
    RidgeProbe,
    fit_estimator,
    is_torch_probe,
    make_estimator,
    predict,
)
from rlhook.latent.scores import DEFAULT_METRICS, METRICS, Task, rows
from rlhook.methods import Method, Prepared
from rlhook.paths import Path

__all__ = ["Probing"]


class Probing(Method):
    """Linear probes from the activations of each module at ``paths`` (and module ``pairs``) to ``labels``.

    Activations are taken from ``("cache", name)`` when the TensorDict has them (e.g. written by
    ``ActivationCaching`` or stored in a replay buffer), else from one forward with hooks on all modules.
    Each activation is flattened to ``(rows, features)`` with the TensorDict's batch dims as rows.

    Use: ``probe.fit(td)`` (or ``probe.partial_fit(td)`` batch after batch; streaming keeps only the
    sufficient statistics of the ridge probes), then ``probe.score(td)`` on held-out data; calling the
    prepared module scores, fitting first if nothing is fitted. ``probe.table()`` gives tidy rows.

    Reads the inputs (or ``("cache", name)``) and ``labels`` (``"labels"``: ``batch`` integers for
    classification, ``batch`` or ``batch + (k,)`` floats for regression). Writes, for each module ``name``
    (``"a*b"`` for a bilinear pair): ``("probe", name, "prediction")`` (per example) and
    ``("probe", name, metric)`` for each metric (a scalar expanded over the batch; metrics ``r2`` or
    ``accuracy``, ``balanced_accuracy``, ``f1``), plus ``("probe", name, "control_" + metric)`` with
    ``control=True``: the same probe fitted on shuffled labels (selectivity = metric - control).

    Args:
        paths: module paths (several at once).
        task: ``"regression"`` or ``"classification"``.
        estimator: ``None`` (ridge for regression, logistic for classification), ``"ridge"``,
            ``"logistic"``, ``"sklearn:ClassName"`` or an estimator object with ``fit``/``predict``.
        alpha, C: regularisation of the ridge and logistic probes (as in scikit-learn).
        pairs: ``[(path_a, path_b)]`` for bilinear probes between two modules' activations.
        labels: the labels key.
        control: also fit a shuffled-label control probe.
    """

    keys = {"labels": "labels", "cache": "cache", "probe": "probe"}

    def __init__(
        self,
        paths: Path | Sequence[Path] = (),
        *,
        task: Task = "regression",
        estimator: Any = None,
        alpha: float = 1.0,
        C: float = 1.0,
        pairs: Sequence[tuple[Path, Path]] = (),
        labels: NestedKey = "labels",
        metrics: Sequence[str] | None = None,
        control: bool = False,
        seed: int = 0,
    ) -> None:
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', not {task!r}")
        metrics = tuple(DEFAULT_METRICS[task] if metrics is None else metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
        if not paths and not pairs:
            raise ValueError("Probing needs paths=... and/or pairs=[(path_a, path_b)]")
        self.paths, self.task, self.estimator, self.alpha, self.C = paths, task, estimator, alpha, C
        self.pairs, self.labels, self.metrics, self.control, self.seed = (
            list(pairs),
            labels,
            metrics,
            control,
            seed,
        )
        self.set_keys(labels=labels)
        make_estimator(estimator, task, alpha, C)  # fail early on a bad estimator
        self._fitted = SimpleNamespace(probes={}, results=[])  # model-free fits, or the last prepare's

    # -- set-up and activations ----------------------------------------------------------------------------------
    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        mods = hooked.resolve(self.paths) if (isinstance(self.paths, str | nn.Module) or self.paths) else []
        pair_mods = [(hooked.resolve_one(a), hooked.resolve_one(b)) for a, b in self.pairs]
        found = dict(mods)
        for (na, ma), (nb, mb) in pair_mods:
            found.setdefault(na, ma)
            found.setdefault(nb, mb)
        hooked.state.modules = list(found.items())
        hooked.state.names = [n for n, _ in mods]
        hooked.state.pairs = [(na, nb) for (na, _), (nb, _) in pair_mods]
        hooked.state.fitted = SimpleNamespace(probes={}, results=[])
        active = self.__dict__.setdefault("_active", [])
        active.append(hooked)

        def leave() -> None:
            active.remove(hooked)
            self._fitted = hooked.state.fitted  # what was fitted stays readable after the block

        hooks.undo(leave)

    @property
    def _store(self) -> SimpleNamespace:
        """Fitted probes and score rows of the innermost prepare (each prepared model has its own)."""
        active = self.__dict__.get("_active") or []
        return active[-1].state.fitted if active else self._fitted

    @property
    def probes(self) -> dict[str, Any]:
        """``{name: fitted probe}`` (``"control:" + name`` for the shuffled-label controls)."""
        return self._store.probes

    @property
    def results(self) -> list[dict[str, Any]]:
        return self._store.results

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_active"}

    def _layout(self) -> tuple[Prepared | None, list[str], list[tuple[str, str]]]:
        """``(innermost prepared module or None, module names, pairs)``; without a model, the paths are the
        names of ``("cache", name)`` entries."""
        active = self.__dict__.get("_active") or []
        if active:
            state = active[-1].state
            return active[-1], state.names, state.pairs
        paths = [self.paths] if isinstance(self.paths, str) else list(self.paths)
        if not all(isinstance(p, str) for p in paths) or not all(
            isinstance(x, str) for p in self.pairs for x in p
        ):
            raise TypeError(
                "without a model, Probing reads ('cache', name) entries, so paths must be module names; prepare "
                "the probe on the model to use regexes or module objects"
            )
        return None, paths, [tuple(p) for p in self.pairs]

    def activations(self, td: TensorDictBase) -> dict[str, torch.Tensor]:
        """``{name: (rows, features)}`` from ``("cache", name)`` or, inside ``prepare``, one hooked forward."""
        hooked, names, pairs = self._layout()
        wanted = list(dict.fromkeys(names + [n for pair in pairs for n in pair]))
        acts: dict[str, torch.Tensor] = {}
        for name in wanted:
            cached = td.get(self.key("cache", name), None)
            if cached is not None:
                acts[name] = rows(cached.detach(), td.batch_dims)
        need = [(n, m) for n, m in (hooked.state.modules if hooked is not None else []) if n not in acts]
        missing = [n for n in wanted if n not in acts and all(n != m for m, _ in need)]
        if missing:
            raise KeyError(
                f"no activations for {missing}: the TensorDict has no ('cache', name) entries for them (cached: "
                f"{sorted(str(k) for k in td.get('cache', {}).keys())}) and the probe is not prepared on a model"
            )
        if need:
            with torch.no_grad(), hooked.run(td.copy()) as run:
                saved = {name: run.save((name, module)) for name, module in need}
            for name, value in run.collect(saved).items():
                acts[name] = value.detach().reshape(max(1, td.numel()), -1)
        return acts

    def _labels(self, td: TensorDictBase) -> torch.Tensor:
        y = get_key(td, self.key("labels"), what="labels")
        y = (
            y.reshape(-1)
            if self.task == "classification" or y.dim() == td.batch_dims
            else rows(y, td.batch_dims)
        )
        if self.task == "classification" and y.is_floating_point():
            if not torch.equal(y, y.round()):
                raise TypeError(
                    "classification labels must be integers (class indices); got non-integer floats"
                )
            y = y.long()
        return y

    def _features(self, acts: dict[str, torch.Tensor]) -> dict[str, Any]:
        _, names, pairs = self._layout()
        feats: dict[str, Any] = {n: acts[n] for n in names}
        for a, b in pairs:
            feats[f"{a}*{b}"] = (acts[a], acts[b])
        return feats

    def _new(self) -> Any:
        return make_estimator(self.estimator, self.task, self.alpha, self.C)

    # -- fitting and scoring ---------------------------------------------------------------------------------------
    def fit(self, td: TensorDictBase) -> dict[str, Any]:
        """Fit one probe per module (and pair) on ``td``; returns ``{name: probe}``."""
        acts, y = self.activations(td), self._labels(td)
        self._store.probes = probes = {}
        for name, x in self._features(acts).items():
            probes[name] = self._fit_one(x, y)
            if self.control:
                g = torch.Generator().manual_seed(self.seed)
                perm = torch.randperm(len(y), generator=g).to(y.device)
                probes["control:" + name] = self._fit_one(x, y[perm])
        return probes

    def _fit_one(self, x: Any, y: torch.Tensor) -> Any:
        if isinstance(x, tuple):
            probe = BilinearProbe(self.task, alpha=self.alpha, C=self.C, seed=self.seed)
            return probe.fit(x[0], x[1], y)
        return fit_estimator(self._new(), x, y)

    def partial_fit(self, td: TensorDictBase) -> dict[str, Any]:
        """Add one batch to streaming probes (ridge probes, or estimators with ``partial_fit``)."""
        acts, y = self.activations(td), self._labels(td)
        if self.pairs or self.control:
            raise ValueError("partial_fit streams plain probes; bilinear pairs and control=True need fit(td)")
        for name, x in self._features(acts).items():
            probe = self.probes.get(name) or self._new()
            if isinstance(probe, RidgeProbe):
                probe.partial_fit(x, y)
            elif hasattr(probe, "partial_fit") and not is_torch_probe(probe):
                kwargs = {}
                if self.task == "classification" and name not in self.probes:
                    classes = getattr(self, "classes", None)
                    if classes is None:
                        raise ValueError(
                            "a streaming sklearn classifier needs probe.classes = [...] set beforehand"
                        )
                    kwargs["classes"] = classes
                probe.partial_fit(x.cpu().numpy(), y.cpu().numpy(), **kwargs)
            else:
                raise TypeError(
                    f"{type(probe).__name__} cannot be fitted batch by batch; use estimator='ridge' or an estimator "
                    "with partial_fit"
                )
            self.probes[name] = probe
        return self.probes

    def score(self, td: TensorDictBase, split: str = "test") -> TensorDictBase:
        """Predict and score every fitted probe on ``td``; write the products (see the class docstring)."""
        if not self.probes:
            raise RuntimeError("no probe is fitted yet: call probe.fit(td) (or partial_fit) first")
        acts, y = self.activations(td), self._labels(td)
        batch = td.batch_size
        for name, x in self._features(acts).items():
            for prefix in ("", "control_") if self.control else ("",):
                probe = self.probes[("control:" if prefix else "") + name]
                pred = probe.predict(*x) if isinstance(x, tuple) else predict(probe, x)
                pred = pred.to(y.device)
                if not prefix:
                    td.set(self.key("probe", name, "prediction"), pred.reshape(*batch, *pred.shape[1:]))
                for metric in self.metrics:
                    value = METRICS[metric](y, pred)
                    td.set(self.key("probe", name, prefix + metric), torch.tensor(value).expand(batch))
                    self.results.append(
                        {
                            "module": name,
                            "metric": prefix + metric,
                            "value": value,
                            "split": split,
                            "n": len(y),
                        }
                    )
        return td

    def table(self) -> list[dict[str, Any]]:
        """Tidy rows ``{"module", "metric", "value", "split", "n"}`` of every ``score`` so far."""
        return list(self.results)

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        active = self.__dict__["_active"]
        active.append(hooked)  # this call works on the prepare it was made on, not the innermost one
        try:
            if not self.probes:
                self.fit(td)
                return self.score(td, split="train")
            return self.score(td)
        finally:
            active.pop()
