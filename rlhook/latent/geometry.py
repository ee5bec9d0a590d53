"""Representation geometry in torch, vectorised over points (no Python loop over them).

Intrinsic dimension of a point cloud ``X (N, D)``:

- ``two_nn`` (Facco et al., 2017): from the ratio of second to first neighbour distances;
- ``local_pca``: components needed to explain a fraction of the variance of each ``k``-neighbourhood;
- ``mle_dimension`` (Levina & Bickel, 2004; averaged as MacKay & Ghahramani suggest): from the first ``k``
  neighbour distances.

Representation similarity of two representations ``X (N, D1)``, ``Y (N, D2)`` of the same ``N`` points:

- ``linear_cka`` / ``rbf_cka`` (Kornblith et al., 2019): centred kernel alignment;
- ``information_imbalance`` (Glielmo et al., 2022): how well neighbours in ``X`` predict neighbours in ``Y``.

Activations of several modules come straight from a TensorDict with ``representations(td, names)``.
Distance matrices are ``N x N``: ``chunk_size`` bounds the rows processed at once in the neighbour searches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase

from rlhook.hooked import get_key

__all__ = [
    "information_imbalance",
    "linear_cka",
    "local_pca",
    "mle_dimension",
    "rbf_cka",
    "representations",
    "similarity_matrix",
    "two_nn",
]


def _points(X: torch.Tensor, what: str = "X") -> torch.Tensor:
    if X.dim() < 2:
        raise ValueError(f"{what} must be (N, features), got shape {tuple(X.shape)}")
    X = X.reshape(len(X), -1)
    return X if X.dtype == torch.float64 else X.float()


def _knn(X: torch.Tensor, k: int, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and indices of the ``k`` nearest neighbours of every point, itself excluded: ``(N, k)``."""
    n = len(X)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    size = n if chunk_size is None else chunk_size
    dists, idx = [], []
    for s in range(0, n, size):
        d = torch.cdist(X[s : s + size], X)
        rows = torch.arange(s, min(s + size, n), device=X.device)
        d[rows - s, rows] = float("inf")
        v, i = d.topk(k, dim=1, largest=False)
        dists.append(v)
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


# -- intrinsic dimension -------------------------------------------------------------------------------------------
def two_nn(X: torch.Tensor, *, discard: float = 0.1, chunk_size: int | None = None) -> float:
    """TwoNN estimate: slope through the origin of ``-log(1 - F(mu))`` against ``log mu``, ``mu = r2 / r1``,
    with the ``discard`` fraction of largest ratios left out."""
    X = _points(X)
    r, _ = _knn(X, 2, chunk_size)
    keep = r[:, 0] > 0  # duplicates have no defined ratio
    mu = (r[keep, 1] / r[keep, 0]).sort().values
    n = len(mu)
    m = max(2, int(n * (1 - discard)))
    x = torch.log(mu[:m])
    y = -torch.log1p(-torch.arange(m, dtype=x.dtype, device=x.device) / n)
    return float((x * y).sum() / (x * x).sum())


def local_pca(
    X: torch.Tensor, *, k: int = 20, threshold: float = 0.9, chunk_size: int | None = None
) -> float:
    """Mean over points of the number of principal components explaining ``threshold`` of the variance of the
    point's ``k``-neighbourhood (itself included)."""
    X = _points(X)
    _, idx = _knn(X, k, chunk_size)
    nb = torch.cat([X[:, None], X[idx]], 1)  # (N, k + 1, D)
    nb = nb - nb.mean(1, keepdim=True)
    s = torch.linalg.svdvals(nb) ** 2  # (N, min(k + 1, D)), descending
    frac = s.cumsum(1) / s.sum(1, keepdim=True).clamp_min(1e-300)
    dims = (frac < threshold - 1e-12).sum(1) + 1
    return float(dims.double().mean())


def mle_dimension(X: torch.Tensor, *, k: int = 20, chunk_size: int | None = None) -> float:
    """Levina-Bickel maximum-likelihood estimate with ``k`` neighbours; per-point inverse estimates averaged."""
    X = _points(X)
    if k < 3:
        raise ValueError(f"the MLE estimator needs k >= 3 neighbours, got {k}")
    r, _ = _knn(X, k, chunk_size)
    r = r.double().clamp_min(1e-300)
    logs = torch.log(r[:, -1:] / r[:, :-1])  # (N, k - 1)
    inv = logs.sum(1) / (k - 2)  # unbiased inverse estimate per point
    return float(1.0 / inv.mean())


# -- similarity ----------------------------------------------------------------------------------------------------
def _center_gram(K: torch.Tensor) -> torch.Tensor:
    return K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``X``, ``Y``."""
    X, Y = _points(X).double(), _points(Y, "Y").double()
    if len(X) != len(Y):
        raise ValueError(f"X and Y must hold the same points: {len(X)} vs {len(Y)} rows")
    X, Y = X - X.mean(0), Y - Y.mean(0)
    num = (Y.T @ X).pow(2).sum()
    den = (X.T @ X).norm() * (Y.T @ Y).norm()
    return float(num / den.clamp_min(1e-300))


def rbf_cka(X: torch.Tensor, Y: torch.Tensor, *, sigma: float = 0.8) -> float:
    """CKA with RBF kernels ``exp(-d^2 / (2 (sigma * median d)^2))`` (bandwidth relative to the median distance)."""
    X, Y = _points(X).double(), _points(Y, "Y").double()
    if len(X) != len(Y):
        raise ValueError(f"X and Y must hold the same points: {len(X)} vs {len(Y)} rows")

    def gram(Z: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(Z, Z).pow(2)
        off = d2[~torch.eye(len(Z), dtype=torch.bool, device=Z.device)]
        med = off.sqrt().median() if off.numel() else torch.tensor(1.0, dtype=Z.dtype)
        bw = (sigma * med).clamp_min(1e-12)
        return _center_gram(torch.exp(-d2 / (2 * bw**2)))

    Kx, Ky = gram(X), gram(Y)
    return float((Kx * Ky).sum() / (Kx.norm() * Ky.norm()).clamp_min(1e-300))


def information_imbalance(
    X: torch.Tensor, Y: torch.Tensor, *, k: int = 1, chunk_size: int | None = None
) -> float:
    """``Delta(X -> Y) = 2 / N * mean rank in Y of the k nearest neighbours in X``.

    Near 0: ``X`` predicts ``Y``'s neighbourhoods (``Y`` is no richer); near 1: no information.
    """
    X, Y = _points(X), _points(Y, "Y")
    n = len(X)
    if len(Y) != n:
        raise ValueError(f"X and Y must hold the same points: {n} vs {len(Y)} rows")
    _, nn_x = _knn(X, k, chunk_size)  # (N, k)
    size = n if chunk_size is None else chunk_size
    ranks = []
    for s in range(0, n, size):
        d = torch.cdist(Y[s : s + size], Y)  # (b, N)
        rows = torch.arange(s, min(s + size, n), device=Y.device)
        d[rows - s, rows] = float("inf")
        target = d.gather(1, nn_x[s : s + size])  # (b, k)
        ranks.append((d[:, None, :] < target[:, :, None]).sum(-1) + 1)  # rank 1 = nearest
    return float(2.0 / n * torch.cat(ranks).double().mean())


# -- from TensorDicts ----------------------------------------------------------------------------------------------
def representations(td: TensorDictBase, names: Sequence[str], key: str = "cache") -> dict[str, torch.Tensor]:
    """``{name: (rows, features)}`` from ``(key, name)`` entries (``ActivationCaching`` writes ``("cache", name)``)."""
    out = {}
    for name in names:
        v = get_key(td, (key, name), what="cached activation")
        out[name] = v.reshape(max(1, td.numel()), -1)
    return out


def similarity_matrix(
    reps: dict[str, torch.Tensor], measure: str = "linear_cka", **kwargs: object
) -> tuple[list[str], torch.Tensor]:
    """``(names, M)`` with ``M[i, j] = measure(reps[i], reps[j])`` for ``linear_cka``, ``rbf_cka`` or
    ``information_imbalance`` (asymmetric: row predicts column)."""
    fns = {"linear_cka": linear_cka, "rbf_cka": rbf_cka, "information_imbalance": information_imbalance}
    if measure not in fns:
        raise ValueError(f"unknown measure {measure!r}; choose one of {list(fns)}")
    names = list(reps)
    M = torch.tensor([[fns[measure](reps[a], reps[b], **kwargs) for b in names] for a in names])
    return names, M
