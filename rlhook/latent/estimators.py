"""Probe estimators: ridge, logistic and bilinear probes in torch, and a bridge to scikit-learn estimators.

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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from rlhook.latent.scores import Task

__all__ = [
    "BilinearProbe",
    "LogisticProbe",
    "RidgeProbe",
    "fit_estimator",
    "is_torch_probe",
    "make_estimator",
    "predict",
    "sklearn_module",
]


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
        return self.fit_chunks(lambda: [(X, y)])

    def fit_chunks(self, chunks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> LogisticProbe:
        """The same fit over data too large to hold: ``chunks()`` yields ``(X (n, d), y (n,))`` blocks and is
        called once for the classes and once per loss evaluation; loss and gradient are summed over blocks."""

        def blocks() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for X, y in chunks():
                yield (X if X.is_floating_point() else X.double()).detach(), y.reshape(-1)

        n, classes, first = 0, [], None
        for X, y in blocks():
            n, first = n + len(X), X if first is None else first
            classes.append(torch.unique(y))
        if first is None:
            raise ValueError("no data: the chunks were empty")
        self.classes_ = torch.unique(torch.cat(classes))
        k = len(self.classes_)
        if k < 2:
            raise ValueError(
                f"a classification probe needs at least two classes in the labels, got {self.classes_.tolist()}"
            )
        d, dtype, device = first.shape[1], first.dtype, first.device
        out = 1 if k == 2 else k
        W = torch.zeros(d, out, dtype=dtype, device=device)
        b = torch.zeros(out, dtype=dtype, device=device)
        params = [W, b] if self.fit_intercept else [W]
        lam = 1.0 / (self.C * n)  # mean-loss form of the same objective (better conditioned)
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=self.tol,
            tolerance_change=1e-12,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
        tiny = torch.finfo(dtype).tiny * 1e3
        classes_ = self.classes_.to(device)

        def closure() -> torch.Tensor:  # mean loss and its gradient, by hand, summed over the blocks
            loss, gW, gb = W.new_zeros(()), torch.zeros_like(W), torch.zeros_like(b)
            for X, y in blocks():
                idx = torch.searchsorted(classes_, y.to(device))
                z = torch.addmm(b, X, W) if self.fit_intercept else X @ W
                if k == 2:
                    target = idx.to(dtype)
                    loss += nn.functional.binary_cross_entropy_with_logits(z[:, 0], target, reduction="sum")
                    g = (torch.sigmoid(z) - target[:, None]) / n
                else:
                    logp = z.log_softmax(-1)
                    loss += nn.functional.nll_loss(logp, idx, reduction="sum")
                    g = logp.exp_()
                    g[torch.arange(len(X), device=device), idx] -= 1
                    g /= n
                # near-zero entries of saturated probabilities would be denormal floats, which make the
                # gradient's matrix product ~10x slower on CPUs; they contribute nothing
                g.masked_fill_(g.abs() < tiny, 0.0)
                gW += (g.T @ X).T  # g^T X: the faster product here
                gb += g.sum(0)
            W.grad = gW.add_(W, alpha=lam)
            if self.fit_intercept:
                b.grad = gb
            return loss / n + 0.5 * lam * (W * W).sum()

        opt.step(closure)
        self.coef_, self.intercept_ = W.detach(), b.detach()
        self.n_iter_ = opt.state[W].get("n_iter", 0)
        self.n_evals_ = opt.state[W].get("func_evals", 0)
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
        self,
        task: Task = "regression",
        *,
        rank: int | None = None,
        alpha: float = 1.0,
        C: float = 1.0,
        seed: int = 0,
    ):
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', not {task!r}")
        if rank is not None and task != "regression":
            raise ValueError("low-rank bilinear probes are fitted for regression only; use rank=None")
        self.task, self.rank, self.alpha, self.C, self.seed = task, rank, alpha, C, seed

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
        gen = torch.Generator().manual_seed(self.seed)  # its own generator: the global RNG is left alone
        dt = x1.dtype
        U = (torch.randn(self.d1, self.rank, generator=gen, dtype=dt) * 0.1).requires_grad_(True)
        V = (torch.randn(self.d2, self.rank, generator=gen, dtype=dt) * 0.1).requires_grad_(True)
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
def sklearn_module(module: str = "sklearn") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            "scikit-learn probes need the 'probe' extra: pip install rlhook[probe] (or pip install scikit-learn)"
        ) from None


def make_estimator(estimator: Any, task: Task, alpha: float, C: float) -> Any:
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
        lm = sklearn_module("sklearn.linear_model")
        if not hasattr(lm, name):
            raise ValueError(f"sklearn.linear_model has no {name!r}")
        cls = getattr(lm, name)
        params = cls().get_params()
        kwargs = {"alpha": alpha} if "alpha" in params else {"C": C} if "C" in params else {}
        return cls(**kwargs)
    if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
        raise TypeError(f"an estimator needs fit and predict methods; {type(estimator).__name__} lacks them")
    if type(estimator).__module__.startswith("sklearn"):
        return sklearn_module("sklearn.base").clone(estimator)
    return copy.deepcopy(estimator)


def is_torch_probe(est: Any) -> bool:
    return isinstance(est, RidgeProbe | LogisticProbe | BilinearProbe)


def fit_estimator(est: Any, X: torch.Tensor, y: torch.Tensor) -> Any:
    if is_torch_probe(est):
        return est.fit(X, y)
    return est.fit(X.detach().cpu().numpy(), y.detach().cpu().numpy())


def predict(est: Any, X: torch.Tensor) -> torch.Tensor:
    if is_torch_probe(est):
        return est.predict(X)
    return torch.as_tensor(est.predict(X.detach().cpu().numpy()))
