"""Linear probes on the activations of several modules at once, bilinear probes, and TCAV concept vectors.

Fast path in torch (no extra dependency):

- ``RidgeProbe``: closed-form ridge regression ``min ||y - X w - b||^2 + alpha ||w||^2`` (scikit-learn's ``Ridge``
  objective), fitted from sufficient statistics (``X^T X``, ``X^T y``, sums) that ``partial_fit`` accumulates
  over any number of batches, so a streaming fit never keeps the activations;
- ``LogisticProbe``: L2-regularised logistic (binary) or softmax (multiclass) regression fitted with L-BFGS,
  ``min sum_i CE_i + ||W||^2 / (2 C)`` (scikit-learn's ``LogisticRegression`` objective);
- ``BilinearProbe``: ``y = x1^T W x2 + b``, closed form on outer-product features or low rank.

Any scikit-learn estimator (``"sklearn:LogisticRegression"`` or an estimator object) works too when the
``probe`` extra is installed (``pip install rlhook[probe]``).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.hooked import get_key
from rlhook.hooks import Hooks
from rlhook.latent.patching import _record, source_td
from rlhook.methods import Method, Prepared
from rlhook.paths import Path
from rlhook.targets import Target, evaluate

__all__ = [
    "BilinearProbe",
    "LogisticProbe",
    "Probing",
    "RidgeProbe",
    "TCAV",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "r2",
]

Task = Literal["regression", "classification"]


# -- metrics ---------------------------------------------------------------------------------------------------------
def r2(y: torch.Tensor, pred: torch.Tensor) -> float:
    """Coefficient of determination, averaged uniformly over output columns (as scikit-learn's ``r2_score``)."""
    y, pred = y.double().reshape(len(y), -1), pred.double().reshape(len(pred), -1)
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    score = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), (ss_res == 0).double())
    return float(score.mean())


def accuracy(y: torch.Tensor, pred: torch.Tensor) -> float:
    """Fraction of exact label matches."""
    return float((y.reshape(-1) == pred.reshape(-1)).double().mean())


def _per_class(
    y: torch.Tensor, pred: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    y, pred = y.reshape(-1).long(), pred.reshape(-1).long()
    classes = torch.unique(torch.cat([y, pred]))
    tp = ((y[:, None] == classes) & (pred[:, None] == classes)).sum(0).double()
    n_true = (y[:, None] == classes).sum(0).double()
    n_pred = (pred[:, None] == classes).sum(0).double()
    return classes, tp, n_true, n_pred


def balanced_accuracy(y: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean recall over the classes present in ``y``."""
    _, tp, n_true, _ = _per_class(y, pred)
    present = n_true > 0
    return float((tp[present] / n_true[present]).mean())


def f1(y: torch.Tensor, pred: torch.Tensor) -> float:
    """F1 of class 1 for binary 0/1 labels, macro-averaged F1 otherwise (scikit-learn's defaults)."""
    classes, tp, n_true, n_pred = _per_class(y, pred)
    per = torch.where(n_true + n_pred > 0, 2 * tp / (n_true + n_pred).clamp_min(1), torch.zeros_like(tp))
    if set(classes.tolist()) <= {0, 1} and len(torch.unique(y)) <= 2:
        return float(per[classes == 1].sum())
    return float(per.mean())


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "r2": r2,
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "f1": f1,
}
DEFAULT_METRICS = {"regression": ("r2",), "classification": ("accuracy", "balanced_accuracy", "f1")}


def _rows(x: torch.Tensor, batch_dims: int = 1) -> torch.Tensor:
    """``(N, features)``: batch dims flattened into rows, the rest into features."""
    n = 1
    for s in x.shape[:batch_dims]:
        n *= s
    return x.reshape(n, -1)


# -- fast-path estimators --------------------------------------------------------------------------------------------
class RidgeProbe:
    """Closed-form ridge regression with an unpenalised intercept; streaming through ``partial_fit``.

    ``fit(X, y)``: ``X (N, d)``, ``y (N,)`` or ``(N, k)``. ``coef_`` is ``(d,)`` or ``(d, k)``, ``intercept_``
    a scalar or ``(k,)``. Statistics are accumulated in float64 around a shift (the first batch's mean), so
    large offsets do not cancel catastrophically; a batch's Gram matrix and sums are computed in ``X``'s dtype.
    """

    def __init__(self, alpha: float = 1.0, fit_intercept: bool = True) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha, self.fit_intercept = float(alpha), fit_intercept
        self.reset()

    def reset(self) -> RidgeProbe:
        self.n = 0
        self._stats: dict[str, torch.Tensor] | None = None
        self._solved = False
        return self

    def partial_fit(self, X: torch.Tensor, y: torch.Tensor) -> RidgeProbe:
        """Add a batch to the sufficient statistics (no solve until ``predict``/``coef_``)."""
        if X.dim() != 2 or len(X) != len(y):
            raise ValueError(
                f"X must be (N, d) and y (N,) or (N, k); got {tuple(X.shape)} and {tuple(y.shape)}"
            )
        if not y.is_floating_point():
            y = y.to(X.dtype if X.is_floating_point() else torch.float64)
        self._vector = y.dim() == 1
        Y = y.reshape(len(y), -1)
        dt = X.dtype if X.is_floating_point() else torch.float64
        if self._stats is None:
            # the shift only needs to be near the mean: computed in X's dtype (float64 reductions of a
            # float32 matrix are ~15x slower on CPU than float32 ones)
            shift_x = (
                X.to(dt).mean(0).double()
                if self.fit_intercept
                else X.new_zeros(X.shape[1], dtype=torch.float64)
            )
            shift_y = (
                Y.to(dt).mean(0).double()
                if self.fit_intercept
                else Y.new_zeros(Y.shape[1], dtype=torch.float64)
            )
            d, k = X.shape[1], Y.shape[1]
            self._stats = {
                "shift_x": shift_x,
                "shift_y": shift_y,
                "xx": torch.zeros(d, d, dtype=torch.float64, device=X.device),
                "xy": torch.zeros(d, k, dtype=torch.float64, device=X.device),
                "sx": torch.zeros(d, dtype=torch.float64, device=X.device),
                "sy": torch.zeros(k, dtype=torch.float64, device=X.device),
            }
        s = self._stats
        if X.shape[1] != s["xx"].shape[0] or Y.shape[1] != s["xy"].shape[1]:
            raise ValueError(
                f"batch has {X.shape[1]} features and {Y.shape[1]} outputs; earlier batches had "
                f"{s['xx'].shape[0]} and {s['xy'].shape[1]}"
            )
        Xs = X.to(dt) - s["shift_x"].to(dt)
        Ys = Y.to(dt) - s["shift_y"].to(dt)
        s["xx"] += (Xs.T @ Xs).double()
        s["xy"] += (Xs.T @ Ys).double()
        s["sx"] += Xs.sum(0).double()  # small: X is shifted by (about) its mean
        s["sy"] += Ys.sum(0).double()
        self.n += len(X)
        self._solved = False
        self._dtype = dt
        return self

    def fit(self, X: torch.Tensor, y: torch.Tensor) -> RidgeProbe:
        return self.reset().partial_fit(X, y)._solve()

    def _solve(self) -> RidgeProbe:
        if self._stats is None:
            raise RuntimeError("the probe has seen no data: call fit or partial_fit first")
        s, n = self._stats, self.n
        if self.fit_intercept:  # centre the shifted statistics: C = S_xx - n m m^T
            mx, my = s["sx"] / n, s["sy"] / n
            xx = s["xx"] - n * torch.outer(mx, mx)
            xy = s["xy"] - n * torch.outer(mx, my)
        else:
            mx = torch.zeros_like(s["sx"])
            my = torch.zeros_like(s["sy"])
            xx, xy = s["xx"], s["xy"]
        a = xx + self.alpha * torch.eye(len(xx), dtype=xx.dtype, device=xx.device)
        try:
            w = torch.cholesky_solve(xy, torch.linalg.cholesky(a))
        except RuntimeError:  # singular (alpha = 0 and rank-deficient): least-squares solution
            w = torch.linalg.lstsq(a, xy).solution
        b = (s["shift_y"] + my) - (s["shift_x"] + mx) @ w
        self._w, self._b = w, b if self.fit_intercept else torch.zeros_like(b)
        self._solved = True
        return self

    @property
    def coef_(self) -> torch.Tensor:
        if not self._solved:
            self._solve()
        return self._w[:, 0] if self._vector else self._w

    @property
    def intercept_(self) -> torch.Tensor:
        if not self._solved:
            self._solve()
        return self._b[0] if self._vector else self._b

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        if not self._solved:
            self._solve()
        dt = X.dtype if X.is_floating_point() else torch.float64
        out = X.to(dt) @ self._w.to(dt) + self._b.to(dt)
        return out[:, 0] if self._vector else out


class LogisticProbe:
    """L2-regularised logistic / softmax regression fitted with L-BFGS (strong Wolfe line search).

    Minimises ``C * sum_i CE_i + ||W||^2 / 2`` (intercept unpenalised); two classes use one logit (sigmoid),
    more use one logit per class, as scikit-learn's ``LogisticRegression`` does. ``fit(X (N, d), y (N,))``
    with any integer labels; ``classes_`` keeps them. L-BFGS stops once the largest gradient entry of the
    mean-loss objective is below ``tol`` (1e-4, scikit-learn's lbfgs default) or after ``max_iter`` steps.
    """

    def __init__(
        self, C: float = 1.0, *, max_iter: int = 200, tol: float = 1e-4, fit_intercept: bool = True
    ) -> None:
        if C <= 0:
            raise ValueError(f"C must be > 0, got {C}")
        self.C, self.max_iter, self.tol, self.fit_intercept = float(C), max_iter, tol, fit_intercept

    def fit(self, X: torch.Tensor, y: torch.Tensor) -> LogisticProbe:
        if X.dim() != 2 or len(X) != len(y):
            raise ValueError(f"X must be (N, d) and y (N,); got {tuple(X.shape)} and {tuple(y.shape)}")
        X = (X if X.is_floating_point() else X.double()).detach()
        self.classes_, idx = torch.unique(y.reshape(-1), return_inverse=True)
        k = len(self.classes_)
        if k < 2:
            raise ValueError(
                f"a classification probe needs at least two classes in the labels, got {self.classes_.tolist()}"
            )
        n, d = X.shape
        out = 1 if k == 2 else k
        W = torch.zeros(d, out, dtype=X.dtype, device=X.device)
        b = torch.zeros(out, dtype=X.dtype, device=X.device)
        params = [W, b] if self.fit_intercept else [W]
        lam = 1.0 / (self.C * n)  # mean-loss form of the same objective (better conditioned)
        target = idx.to(X.dtype) if k == 2 else idx
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=self.tol,
            tolerance_change=1e-12,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        rows = torch.arange(n, device=X.device)
        tiny = torch.finfo(X.dtype).tiny * 1e3

        def closure() -> torch.Tensor:  # mean loss and its gradient, by hand
            z = torch.addmm(b, X, W) if self.fit_intercept else X @ W
            if k == 2:
                loss = nn.functional.binary_cross_entropy_with_logits(z[:, 0], target)
                g = (torch.sigmoid(z) - target[:, None]) / n
            else:
                logp = z.log_softmax(-1)
                loss = nn.functional.nll_loss(logp, target)
                g = logp.exp_()
                g[rows, target] -= 1
                g /= n
            # near-zero entries of saturated probabilities would be denormal floats, which make the
            # gradient's matrix product ~10x slower on CPUs; they contribute nothing
            g.masked_fill_(g.abs() < tiny, 0.0)
            W.grad = (g.T @ X).T.contiguous().add_(W, alpha=lam)  # g^T X: the faster product here
            if self.fit_intercept:
                b.grad = g.sum(0)
            return loss + 0.5 * lam * (W * W).sum()

        opt.step(closure)
        self.coef_, self.intercept_ = W.detach(), b.detach()
        self.n_iter_ = opt.state[W].get("n_iter", 0)
        return self

    def decision_function(self, X: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` for two classes, ``(N, k)`` otherwise."""
        X = X.to(self.coef_.dtype)
        z = X @ self.coef_ + (self.intercept_ if self.fit_intercept else 0)
        return z[:, 0] if z.shape[1] == 1 else z

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        z = self.decision_function(X)
        if z.dim() == 1:
            p = torch.sigmoid(z)
            return torch.stack([1 - p, p], -1)
        return torch.softmax(z, -1)

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        z = self.decision_function(X)
        i = (z > 0).long() if z.dim() == 1 else z.argmax(-1)
        return self.classes_.to(z.device)[i]


class BilinearProbe:
    """``y = x1^T W x2 + b`` (regression) or its logistic version (classification).

    ``rank=None`` fits ``W`` in closed form on the outer-product features ``x1 (x) x2`` (ridge or logistic on
    ``d1 * d2`` columns); an integer rank fits ``W = U V^T`` (``U (d1, r)``, ``V (d2, r)``) by L-BFGS on the
    squared error plus ``alpha * (||U||^2 + ||V||^2)`` (regression only).
    """

    def __init__(
        self, task: Task = "regression", *, rank: int | None = None, alpha: float = 1.0, C: float = 1.0
    ):
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', not {task!r}")
        if rank is not None and task != "regression":
            raise ValueError("low-rank bilinear probes are fitted for regression only; use rank=None")
        self.task, self.rank, self.alpha, self.C = task, rank, alpha, C

    @staticmethod
    def features(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``(N, d1 * d2)`` outer products."""
        return (x1[:, :, None] * x2[:, None, :]).reshape(len(x1), -1)

    def fit(self, x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor) -> BilinearProbe:
        self.d1, self.d2 = x1.shape[1], x2.shape[1]
        if self.rank is None:
            f = self.features(x1, x2)
            self.inner = (RidgeProbe(self.alpha) if self.task == "regression" else LogisticProbe(self.C)).fit(
                f, y
            )
            return self
        torch.manual_seed(0)
        dt = x1.dtype
        U = (torch.randn(self.d1, self.rank, dtype=dt) * 0.1).requires_grad_(True)
        V = (torch.randn(self.d2, self.rank, dtype=dt) * 0.1).requires_grad_(True)
        b = torch.zeros((), dtype=dt, requires_grad=True)
        y = y.to(dt)
        opt = torch.optim.LBFGS(
            [U, V, b], lr=1, max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-9
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            pred = ((x1 @ U) * (x2 @ V)).sum(-1) + b
            loss = ((pred - y) ** 2).sum() + self.alpha * ((U * U).sum() + (V * V).sum())
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.U, self.V, self.b = U.detach(), V.detach(), b.detach()
        return self

    @property
    def weight(self) -> torch.Tensor:
        """``W``, shape ``(d1, d2)``."""
        if self.rank is not None:
            return self.U @ self.V.T
        coef = self.inner.coef_
        return (
            coef.reshape(self.d1, self.d2)
            if coef.dim() == 1 or coef.shape[-1] == 1
            else coef.reshape(self.d1, self.d2, -1)
        )

    def predict(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.rank is None:
            return self.inner.predict(self.features(x1, x2))
        return ((x1 @ self.U.to(x1.dtype)) * (x2 @ self.V.to(x1.dtype))).sum(-1) + self.b


# -- scikit-learn bridge ---------------------------------------------------------------------------------------------
def _sklearn(module: str = "sklearn") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            "scikit-learn probes need the 'probe' extra: pip install rlhook[probe] (or pip install scikit-learn)"
        ) from None


def _make_estimator(estimator: Any, task: Task, alpha: float, C: float) -> Any:
    if estimator == "ridge":
        return RidgeProbe(alpha)
    if estimator == "logistic":
        return LogisticProbe(C)
    if estimator is None:
        return RidgeProbe(alpha) if task == "regression" else LogisticProbe(C)
    if isinstance(estimator, str):
        if not estimator.startswith("sklearn:"):
            raise ValueError(
                f"unknown estimator {estimator!r}: use 'ridge', 'logistic', 'sklearn:ClassName' "
                "(e.g. 'sklearn:LogisticRegression') or an estimator object with fit/predict"
            )
        name = estimator.split(":", 1)[1]
        lm = _sklearn("sklearn.linear_model")
        if not hasattr(lm, name):
            raise ValueError(f"sklearn.linear_model has no {name!r}")
        cls = getattr(lm, name)
        params = cls().get_params()
        kwargs = {"alpha": alpha} if "alpha" in params else {"C": C} if "C" in params else {}
        return cls(**kwargs)
    if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
        raise TypeError(f"an estimator needs fit and predict methods; {type(estimator).__name__} lacks them")
    if type(estimator).__module__.startswith("sklearn"):
        return _sklearn("sklearn.base").clone(estimator)
    return copy.deepcopy(estimator)


def _is_torch(est: Any) -> bool:
    return isinstance(est, RidgeProbe | LogisticProbe | BilinearProbe)


def _fit(est: Any, X: torch.Tensor, y: torch.Tensor) -> Any:
    if _is_torch(est):
        return est.fit(X, y)
    return est.fit(X.detach().cpu().numpy(), y.detach().cpu().numpy())


def _predict(est: Any, X: torch.Tensor) -> torch.Tensor:
    if _is_torch(est):
        return est.predict(X)
    return torch.as_tensor(est.predict(X.detach().cpu().numpy()))


# -- the method ------------------------------------------------------------------------------------------------------
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
        _make_estimator(estimator, task, alpha, C)  # fail early on a bad estimator
        self.probes: dict[str, Any] = {}
        self.results: list[dict[str, Any]] = []

    # -- set-up and activations ----------------------------------------------------------------------------------
    def _setup(self, hooked: Prepared, hooks: Hooks) -> None:
        mods = hooked.resolve(self.paths) if (isinstance(self.paths, str | nn.Module) or self.paths) else []
        pair_mods = [(hooked.resolve_one(a), hooked.resolve_one(b)) for a, b in self.pairs]
        found = dict(mods)
        for (na, ma), (nb, mb) in pair_mods:
            found.setdefault(na, ma)
            found.setdefault(nb, mb)
        self._modules = list(found.items())
        self._names = [n for n, _ in mods]
        self._pairs = [(na, nb) for (na, _), (nb, _) in pair_mods]
        self._hooked = hooked
        self.probes, self.results = {}, []

    def _hooked_or_fail(self) -> Prepared:
        if not hasattr(self, "_hooked"):
            raise RuntimeError("use the probe inside `with probe.prepare(model) as hooked:`")
        return self._hooked

    def activations(self, td: TensorDictBase) -> dict[str, torch.Tensor]:
        """``{name: (rows, features)}`` from ``("cache", name)`` or one hooked forward."""
        hooked = self._hooked_or_fail()
        acts: dict[str, torch.Tensor] = {}
        need = []
        for name, module in self._modules:
            cached = td.get(("cache", name), None)
            if cached is not None:
                acts[name] = _rows(cached.detach(), td.batch_dims)
            else:
                need.append((name, module))
        if need:
            store: dict[str, torch.Tensor] = {}
            with Hooks() as hooks, torch.no_grad():
                for name, module in need:
                    hooks.forward(module, _record(store, name))
                hooked.model_forward(td.copy())
            missing = [n for n, _ in need if n not in store]
            if missing:
                raise RuntimeError(f"modules {missing} never ran during the forward")
            for name, _ in need:
                acts[name] = store[name].detach().reshape(max(1, td.numel()), -1)
        return acts

    def _labels(self, td: TensorDictBase) -> torch.Tensor:
        y = get_key(td, self.labels, what="labels")
        y = (
            y.reshape(-1)
            if self.task == "classification" or y.dim() == td.batch_dims
            else _rows(y, td.batch_dims)
        )
        if self.task == "classification" and y.is_floating_point():
            if not torch.equal(y, y.round()):
                raise TypeError(
                    "classification labels must be integers (class indices); got non-integer floats"
                )
            y = y.long()
        return y

    def _features(self, acts: dict[str, torch.Tensor]) -> dict[str, Any]:
        feats: dict[str, Any] = {n: acts[n] for n in self._names}
        for a, b in self._pairs:
            feats[f"{a}*{b}"] = (acts[a], acts[b])
        return feats

    def _new(self) -> Any:
        return _make_estimator(self.estimator, self.task, self.alpha, self.C)

    # -- fitting and scoring ---------------------------------------------------------------------------------------
    def fit(self, td: TensorDictBase) -> dict[str, Any]:
        """Fit one probe per module (and pair) on ``td``; returns ``{name: probe}``."""
        acts, y = self.activations(td), self._labels(td)
        self.probes = {}
        for name, x in self._features(acts).items():
            self.probes[name] = self._fit_one(x, y)
            if self.control:
                g = torch.Generator().manual_seed(self.seed)
                perm = torch.randperm(len(y), generator=g).to(y.device)
                self.probes["control:" + name] = self._fit_one(x, y[perm])
        return self.probes

    def _fit_one(self, x: Any, y: torch.Tensor) -> Any:
        if isinstance(x, tuple):
            probe = BilinearProbe(self.task, alpha=self.alpha, C=self.C)
            return probe.fit(x[0], x[1], y)
        return _fit(self._new(), x, y)

    def partial_fit(self, td: TensorDictBase) -> dict[str, Any]:
        """Add one batch to streaming probes (ridge probes, or estimators with ``partial_fit``)."""
        acts, y = self.activations(td), self._labels(td)
        if self._pairs or self.control:
            raise ValueError("partial_fit streams plain probes; bilinear pairs and control=True need fit(td)")
        for name, x in self._features(acts).items():
            probe = self.probes.get(name) or self._new()
            if isinstance(probe, RidgeProbe):
                probe.partial_fit(x, y)
            elif hasattr(probe, "partial_fit") and not _is_torch(probe):
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
                pred = probe.predict(*x) if isinstance(x, tuple) else _predict(probe, x)
                pred = pred.to(y.device)
                if not prefix:
                    td.set(("probe", name, "prediction"), pred.reshape(*batch, *pred.shape[1:]))
                for metric in self.metrics:
                    value = METRICS[metric](y, pred)
                    td.set(("probe", name, prefix + metric), torch.tensor(value).expand(batch))
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

    def _apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        if not self.probes:
            self.fit(td)
            return self.score(td, split="train")
        return self.score(td)


# -- TCAV ---------------------------------------------------------------------------------------------------------------
class TCAV(Method):
    """Concept activation vectors (Kim et al., 2018) on logistic probes, and TCAV scores.

    For each module ``name`` at ``paths``, a ``LogisticProbe`` separates the activations of the concept
    examples ``("positive", k)`` from those of the random / counter examples ``("negative", k)``; the CAV is
    its unit-norm weight vector. The conceptual sensitivity of each input example is the derivative of
    ``target`` along the CAV at that module, ``grad_h target . cav``; the TCAV score is the fraction of
    examples where it is positive.

    Reads the inputs, ``("positive", k)``, ``("negative", k)``. Writes ``("probe", name, "cav_derivative")``
    (per example), ``("probe", name, "tcav")`` and ``("probe", name, "cav_accuracy")`` (scalars expanded over
    the batch). ``method.cavs[name]`` keeps each CAV (shape of the activation without batch). With
    ``n_random > 0`` it also writes ``("probe", name, "tcav_random")``: the mean score of CAVs fitted on
    shuffled concept labels (a chance baseline, near 0.5 for a concept the module does not encode).
    """

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
        self.cavs: dict[str, torch.Tensor] = {}

    def _setup(self, hooked: Prepared, hooks: Hooks) -> None:
        self._modules = hooked.resolve(self.paths)

    def _acts(self, hooked: Prepared, td: TensorDictBase) -> dict[str, torch.Tensor]:
        store: dict[str, torch.Tensor] = {}
        with Hooks() as hooks, torch.no_grad():
            for name, module in self._modules:
                hooks.forward(module, _record(store, name))
            hooked.model_forward(td)
        return {n: v.detach() for n, v in store.items()}

    def _apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        pos = self._acts(hooked, source_td(td, hooked.in_keys, "positive").exclude("negative"))
        neg = self._acts(hooked, source_td(td, hooked.in_keys, "negative").exclude("positive"))
        grads: dict[str, torch.Tensor] = {}
        store: dict[str, torch.Tensor] = {}
        with Hooks() as hooks, torch.enable_grad():
            for name, module in self._modules:
                hooks.forward(module, _record(store, name))
            out = hooked.model_forward(td.exclude("positive", "negative").copy())
            scores = evaluate(self.target, out)
            if len(scores) != 1:
                raise ValueError(
                    "TCAV explains one target; pass a single key or a callable returning a tensor"
                )
            (score,) = scores.values()
            missing = [n for n, _ in self._modules if n not in store]
            if missing:
                raise RuntimeError(f"modules {missing} never ran during the forward")
            names = [n for n, _ in self._modules]
            gs = torch.autograd.grad(score.sum(), [store[n] for n in names], allow_unused=True)
            for n, g in zip(names, gs):
                grads[n] = torch.zeros_like(store[n]) if g is None else g.detach()
        batch = td.batch_size
        for name in grads:
            xp, xn = pos[name].reshape(len(pos[name]), -1), neg[name].reshape(len(neg[name]), -1)
            X = torch.cat([xp, xn]).double()
            y = torch.cat([torch.ones(len(xp)), torch.zeros(len(xn))]).long()
            cav, acc = self._cav(X, y)
            self.cavs[name] = cav.reshape(pos[name].shape[1:]).to(pos[name].dtype)
            g = grads[name].reshape(len(grads[name]), -1).double()
            deriv = g @ cav
            td.set(("probe", name, "cav_derivative"), deriv.to(g.dtype).reshape(batch).float())
            td.set(("probe", name, "tcav"), (deriv > 0).double().mean().float().expand(batch))
            td.set(("probe", name, "cav_accuracy"), torch.tensor(acc).float().expand(batch))
            if self.n_random:
                gen = torch.Generator().manual_seed(self.seed)
                rand = []
                for _ in range(self.n_random):
                    rcav, _ = self._cav(X, y[torch.randperm(len(y), generator=gen)])
                    rand.append(float(((g @ rcav) > 0).double().mean()))
                td.set(
                    ("probe", name, "tcav_random"), torch.tensor(sum(rand) / len(rand)).float().expand(batch)
                )
        return td

    def _cav(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        probe = LogisticProbe(self.C).fit(X, y)
        w = probe.coef_[:, 0]
        return w / w.norm().clamp_min(1e-12), accuracy(y, probe.predict(X))
