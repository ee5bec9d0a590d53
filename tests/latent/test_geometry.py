"""Intrinsic dimension of known manifolds in R^10, CKA on closed-form cases, information imbalance orderings."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from rlhook.latent.geometry import (
    information_imbalance,
    linear_cka,
    local_pca,
    mle_dimension,
    rbf_cka,
    representations,
    similarity_matrix,
    two_nn,
)

G = torch.Generator().manual_seed(0)


def embed(Z: torch.Tensor, D: int = 10) -> torch.Tensor:
    """Random isometric embedding of ``Z (N, d)`` into R^D, plus a random offset."""
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=G, dtype=torch.float64))
    return Z.double() @ Q[: Z.shape[1]] + torch.randn(D, generator=G, dtype=torch.float64)


def plane(n=1500):
    return embed(torch.rand(n, 2, generator=G, dtype=torch.float64) * 4)


def circle(n=1500):
    t = torch.rand(n, generator=G, dtype=torch.float64) * 2 * math.pi
    return embed(torch.stack([t.cos(), t.sin()], 1))


def sphere(n=1500):
    v = torch.randn(n, 3, generator=G, dtype=torch.float64)
    return embed(v / v.norm(dim=1, keepdim=True))


@pytest.mark.parametrize(("make", "dim"), [(plane, 2), (circle, 1), (sphere, 2)])
def test_intrinsic_dimension_of_manifolds(make, dim):
    X = make()
    assert two_nn(X) == pytest.approx(dim, rel=0.15)
    assert mle_dimension(X, k=15) == pytest.approx(dim, rel=0.15)
    assert local_pca(X, k=15, threshold=0.9) == pytest.approx(dim, abs=0.35)
    assert two_nn(X, chunk_size=256) == pytest.approx(two_nn(X))  # chunked == unchunked


def test_twonn_matches_explicit_loop():
    X = plane(200)
    # independent reference: per-point loops and a least-squares fit through the origin
    mus = []
    for i in range(len(X)):
        d = sorted(float((X[i] - X[j]).norm()) for j in range(len(X)) if j != i)
        mus.append(d[1] / d[0])
    mus.sort()
    m = int(len(mus) * 0.9)
    xs = [math.log(v) for v in mus[:m]]
    ys = [-math.log(1 - i / len(mus)) for i in range(m)]
    ref = sum(a * b for a, b in zip(xs, ys)) / sum(a * a for a in xs)
    assert two_nn(X) == pytest.approx(ref, rel=1e-9)


def test_cka_known_cases():
    X = torch.randn(300, 20, generator=G, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(20, 20, generator=G, dtype=torch.float64))
    assert linear_cka(X, X) == pytest.approx(1.0)
    assert linear_cka(X, X @ Q) == pytest.approx(1.0)  # orthogonal invariance
    assert linear_cka(X, 7.3 * X + 2.0) == pytest.approx(1.0)  # isotropic scaling (and translation)
    assert rbf_cka(X, X @ Q) == pytest.approx(1.0)
    assert rbf_cka(X, 3.0 * X) == pytest.approx(1.0)  # bandwidth follows the median distance
    Y = torch.randn(300, 20, generator=G, dtype=torch.float64)
    assert linear_cka(X, Y) < 0.2 and rbf_cka(X, Y) < 0.2
    # anisotropic scaling is not an invariance
    assert linear_cka(X, X * torch.linspace(0.1, 10, 20, dtype=torch.float64)) < 0.9
    # closed form through HSIC with explicit centring matrices
    n = 300
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda A, B: torch.trace(A @ H @ B @ H)
    ref = hsic(K, L) / torch.sqrt(hsic(K, K) * hsic(L, L))
    assert linear_cka(X, Y) == pytest.approx(float(ref), rel=1e-9)


def test_information_imbalance_orderings():
    X = torch.randn(400, 6, generator=G, dtype=torch.float64)
    sub = X[:, :2]
    noise = torch.randn(400, 6, generator=G, dtype=torch.float64)
    assert information_imbalance(X, X) < 0.01
    assert information_imbalance(X, sub) < information_imbalance(sub, X)  # full space predicts its subspace
    assert information_imbalance(X, noise) == pytest.approx(1.0, abs=0.15)
    # explicit loop on a small set
    A, B = X[:40], noise[:40]
    total = 0
    for i in range(40):
        da = [(float((A[i] - A[j]).norm()), j) for j in range(40) if j != i]
        j = min(da)[1]
        db = sorted((float((B[i] - B[m]).norm()), m) for m in range(40) if m != i)
        total += [m for _, m in db].index(j) + 1
    assert information_imbalance(A, B) == pytest.approx(2.0 / 40 * total / 40)
    assert information_imbalance(A, B, chunk_size=7) == pytest.approx(information_imbalance(A, B))


def test_representations_from_td():
    td = TensorDict({("cache", "a"): torch.randn(4, 5, 3), ("cache", "b"): torch.randn(4, 5, 2)}, [4, 5])
    reps = representations(td, ["a", "b"])
    assert reps["a"].shape == (20, 3)
    names, M = similarity_matrix(reps)
    assert names == ["a", "b"] and M.shape == (2, 2) and M[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="measure"):
        similarity_matrix(reps, "cosine")
