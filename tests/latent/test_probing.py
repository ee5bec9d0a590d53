"""Probes against scikit-learn fits on the same data, streaming == one-shot, bilinear and TCAV known cases."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rlhook.latent import (
    TCAV,
    ActivationCaching,
    BilinearProbe,
    LogisticProbe,
    Probing,
    RidgeProbe,
    accuracy,
    balanced_accuracy,
    f1,
    r2,
)
from tests.latent.helpers import check_lifecycle
from tests.models import MLP

sk_lm = pytest.importorskip("sklearn.linear_model")
sk_metrics = pytest.importorskip("sklearn.metrics")


def data(n=400, d=12, k=None, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    X = (
        torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d, dtype=torch.float64)
        + offset
    )
    w = torch.randn(d, *(() if k is None else (k,)), generator=g, dtype=torch.float64)
    y = X @ w + 0.3 * torch.randn(n, *(() if k is None else (k,)), generator=g, dtype=torch.float64)
    return X, y


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("alpha", [0.0, 1.0, 50.0])
def test_ridge_matches_sklearn(k, alpha):
    X, y = data(k=k, offset=5.0)
    ours = RidgeProbe(alpha).fit(X, y)
    ref = sk_lm.Ridge(alpha=alpha).fit(X.numpy(), y.numpy())
    np.testing.assert_allclose(ours.coef_.numpy(), ref.coef_.T if k else ref.coef_, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(ours.intercept_.numpy(), ref.intercept_, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(ours.predict(X).numpy(), ref.predict(X.numpy()), rtol=1e-7, atol=1e-7)


def test_streaming_ridge_equals_one_shot():
    X, y = data(n=1000, k=2, offset=100.0)  # a large offset: the shifted statistics must not cancel
    stream = RidgeProbe(3.0)
    for chunk in range(0, 1000, 137):
        stream.partial_fit(X[chunk : chunk + 137], y[chunk : chunk + 137])
    one = RidgeProbe(3.0).fit(X, y)
    torch.testing.assert_close(stream.coef_, one.coef_, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stream.intercept_, one.intercept_, rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("C", [0.1, 1.0])
def test_logistic_matches_sklearn(n_classes, C):
    X, _ = data(n=500, d=8, seed=1)
    g = torch.Generator().manual_seed(2)
    logits = X @ torch.randn(8, n_classes, generator=g, dtype=torch.float64)
    y = (
        torch.multinomial(torch.softmax(logits, -1), 1, generator=g)[:, 0] + 3
    )  # labels 3..: classes_ map back
    ours = LogisticProbe(C, tol=1e-10, max_iter=1000).fit(X, y)
    ref = sk_lm.LogisticRegression(C=C, tol=1e-10, max_iter=5000).fit(X.numpy(), y.numpy())
    coef = ours.coef_.numpy().T
    np.testing.assert_allclose(coef, ref.coef_, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(ours.intercept_.numpy(), ref.intercept_, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(ours.predict_proba(X).numpy(), ref.predict_proba(X.numpy()), atol=5e-5)
    assert torch.equal(ours.predict(X), torch.as_tensor(ref.predict(X.numpy())))


def test_metrics_match_sklearn():
    g = torch.Generator().manual_seed(3)
    for n_classes in (2, 5):
        y = torch.randint(0, n_classes, (300,), generator=g)
        p = torch.where(
            torch.rand(300, generator=g) < 0.6, y, torch.randint(0, n_classes, (300,), generator=g)
        )
        yn, pn = y.numpy(), p.numpy()
        avg = "binary" if n_classes == 2 else "macro"
        assert accuracy(y, p) == pytest.approx(sk_metrics.accuracy_score(yn, pn))
        assert balanced_accuracy(y, p) == pytest.approx(sk_metrics.balanced_accuracy_score(yn, pn))
        assert f1(y, p) == pytest.approx(sk_metrics.f1_score(yn, pn, average=avg))
    X, y = data(k=3)
    pred = y + 0.5 * torch.randn_like(y)
    assert r2(y, pred) == pytest.approx(sk_metrics.r2_score(y.numpy(), pred.numpy()))


@pytest.fixture
def mlp_and_data():
    torch.manual_seed(0)
    model = MLP(n_in=6, width=16)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(600, 6, generator=g)
    y_reg = x[:, 0] * 2 - x[:, 1] + 0.1 * torch.randn(600, generator=g)
    y_cls = (x[:, 2] + 0.3 * x[:, 3] > 0).long()
    return model, x, y_reg, y_cls


def hooked_acts(model, x):
    out, h = {}, x
    for i, layer in enumerate(model.layers):
        h = layer(h)
        out[f"layers.{i}"] = h.detach()
    return out


def test_probing_several_modules_vs_sklearn(mlp_and_data):
    model, x, y_reg, y_cls = mlp_and_data
    train = TensorDict({"input": x[:400], "labels": y_reg[:400]}, [400])
    test = TensorDict({"input": x[400:], "labels": y_reg[400:]}, [200])
    probe = Probing(r"layers\.\d", alpha=2.0)
    with torch.no_grad(), probe.prepare(model):
        probe.fit(train)
        out = probe.score(test.clone())
    acts_tr, acts_te = hooked_acts(model, x[:400]), hooked_acts(model, x[400:])
    for name in acts_tr:
        ref = sk_lm.Ridge(alpha=2.0).fit(acts_tr[name].double().numpy(), y_reg[:400].double().numpy())
        pred = ref.predict(acts_te[name].double().numpy())
        np.testing.assert_allclose(out["probe", name, "prediction"].numpy(), pred, rtol=1e-4, atol=1e-4)
        assert out["probe", name, "r2"][0].item() == pytest.approx(
            sk_metrics.r2_score(y_reg[400:].numpy(), pred), abs=1e-5
        )
    rows = probe.table()
    assert {r["module"] for r in rows} == {"layers.0", "layers.1", "layers.2"} and rows[0]["split"] == "test"

    # classification with the fast path and with a scikit-learn estimator, on the same data
    train["labels"], test["labels"] = y_cls[:400], y_cls[400:]
    fast, sk = (
        Probing("layers.1", task="classification"),
        Probing("layers.1", task="classification", estimator="sklearn:LogisticRegression"),
    )
    with torch.no_grad(), fast.prepare(model):
        fast.fit(train)
        a = fast.score(test.clone())
    with torch.no_grad(), sk.prepare(model):
        sk.fit(train)
        b = sk.score(test.clone())
    agree = (a["probe", "layers.1", "prediction"] == b["probe", "layers.1", "prediction"]).float().mean()
    assert agree > 0.99
    assert a["probe", "layers.1", "accuracy"][0].item() == pytest.approx(
        b["probe", "layers.1", "accuracy"][0].item(), abs=0.01
    )


def test_cache_streaming_and_control(mlp_and_data):
    model, x, y_reg, _ = mlp_and_data
    td = TensorDict({"input": x, "labels": y_reg}, [600])
    with torch.no_grad(), ActivationCaching(["layers.0", "layers.2"]).prepare(model) as hooked:
        cached = hooked(td.clone()).exclude("input")  # no inputs: the probe must read ("cache", name)
    stream = Probing(["layers.0", "layers.2"])
    with stream.prepare(model):
        for i in range(0, 600, 100):
            stream.partial_fit(cached[i : i + 100])
        a = stream.score(cached.clone())
    one = Probing(["layers.0", "layers.2"], control=True)
    with one.prepare(model) as hooked:
        b = hooked(td.clone())  # first call fits, then scores (train split)
    torch.testing.assert_close(
        a["probe", "layers.2", "prediction"], b["probe", "layers.2", "prediction"], atol=1e-4, rtol=1e-4
    )
    assert b["probe", "layers.0", "r2"][0] > 0.8
    assert b["probe", "layers.0", "r2"][0] > b["probe", "layers.0", "control_r2"][0] + 0.5


def test_bilinear_probe_recovers_planted_form():
    g = torch.Generator().manual_seed(5)
    x1, x2 = (
        torch.randn(800, 4, generator=g, dtype=torch.float64),
        torch.randn(800, 3, generator=g, dtype=torch.float64),
    )
    W = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = ((x1 @ W) * x2).sum(-1) + 0.5
    full = BilinearProbe(alpha=1e-6).fit(x1, x2, y)
    torch.testing.assert_close(full.weight, W, atol=1e-4, rtol=1e-4)
    ref = sk_lm.Ridge(alpha=1e-6).fit(BilinearProbe.features(x1, x2).numpy(), y.numpy())
    np.testing.assert_allclose(
        full.predict(x1, x2).numpy(), ref.predict(BilinearProbe.features(x1, x2).numpy()), atol=1e-6
    )
    Wr = torch.outer(
        torch.randn(4, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    )
    yr = ((x1 @ Wr) * x2).sum(-1)
    low = BilinearProbe(rank=1, alpha=1e-8).fit(x1, x2, yr)
    assert r2(yr, low.predict(x1, x2)) > 0.999


def test_probing_pairs_on_model(mlp_and_data):
    model, x, _, _ = mlp_and_data
    acts = hooked_acts(model, x)
    y = (acts["layers.0"][:, 0] * acts["layers.1"][:, 1]).detach()
    td = TensorDict({"input": x, "labels": y}, [600])
    probe = Probing(pairs=[("layers.0", "layers.1")], alpha=1e-6)
    with torch.no_grad(), probe.prepare(model) as hooked:
        out = hooked(td.clone())
    assert out["probe", "layers.0*layers.1", "r2"][0] > 0.999


def test_tcav_known_direction():
    """target = w . h at a linear read-out, concept examples shifted along +w or -w."""
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(5, 5), torch.nn.Identity(), torch.nn.Linear(5, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(5)), model[0].bias.zero_()
    w = model[2].weight[0].detach()
    x = torch.randn(50, 5)
    base = torch.randn(60, 5)
    for sign, expected in ((1.0, 1.0), (-1.0, 0.0)):
        td = TensorDict(
            {
                "input": x,
                ("positive", "input"): (base + sign * 3 * w / w.norm())[:50],
                ("negative", "input"): base[10:],
            },
            [50],
        )
        method = TCAV("1", "output", n_random=3)
        with method.prepare(model) as hooked:
            out = hooked(td.clone())
            cav = hooked.state.cavs["1"]
        assert out["probe", "1", "tcav"][0] == expected
        assert out["probe", "1", "cav_accuracy"][0] > 0.9
        torch.testing.assert_close(
            out["probe", "1", "cav_derivative"], (w @ cav).expand(50), atol=1e-5, rtol=1e-5
        )
        assert torch.nn.functional.cosine_similarity(cav, sign * w, dim=0) > 0.9


def test_lifecycle_errors_and_missing_sklearn(mlp_and_data, monkeypatch):
    model, x, y_reg, _ = mlp_and_data
    td = TensorDict({"input": x[:50], "labels": y_reg[:50]}, [50])
    check_lifecycle(Probing("layers.0"), model, td)
    with pytest.raises(ValueError, match="task"):
        Probing("layers.0", task="clustering")
    with pytest.raises(RuntimeError, match="fit"):
        p = Probing("layers.0")
        with p.prepare(model):
            p.score(td)
    with pytest.raises(ValueError, match="two classes"):
        LogisticProbe().fit(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    real = importlib.import_module

    def no_sklearn(name, *args):
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_sklearn)
    with pytest.raises(ImportError, match=r"pip install rlhook\[probe\]"):
        Probing("layers.0", estimator="sklearn:Ridge")


def test_multi_dim_batch_probing_equals_flat(mlp_and_data):
    model, x, y_reg, _ = mlp_and_data
    flat = TensorDict({"input": x, "labels": y_reg}, [600])
    grid = TensorDict({"input": x.reshape(20, 30, 6), "labels": y_reg.reshape(20, 30)}, [20, 30])
    a, b = Probing("layers.1"), Probing("layers.1")
    with torch.no_grad(), a.prepare(model) as ha, b.prepare(model) as hb:
        fa, fb = ha(flat.clone()), hb(grid.clone())
    torch.testing.assert_close(
        fb["probe", "layers.1", "prediction"].reshape(600), fa["probe", "layers.1", "prediction"]
    )
    assert fb["probe", "layers.1", "r2"].shape == (20, 30)


def test_probe_with_controls_against_scikit_learn():
    """A planted linear feature: the trained set scores like scikit-learn's ridge on the same split, a noise
    feature set and the shuffled-label control score near zero."""
    from rlhook.latent import probe_with_controls, split_rows

    g = torch.Generator().manual_seed(3)
    y = torch.randn(400, generator=g, dtype=torch.float64)
    planted = torch.cat(
        [y[:, None] + 0.1 * torch.randn(400, 1, generator=g), torch.randn(400, 7, generator=g)], 1
    )
    noise = torch.randn(400, 8, generator=g, dtype=torch.float64)
    train, test = split_rows(400, 0.25, seed=1)
    rows = probe_with_controls(
        {"trained": {"h": planted.double()}, "random_init": {"h": noise}},
        {"q": y},
        train=train,
        test=test,
        alpha=2.0,
    )
    by = {r["features"]: r for r in rows}
    ref = sk_lm.Ridge(alpha=2.0).fit(planted[train].numpy(), y[train].numpy())
    from sklearn.metrics import r2_score

    assert by["trained"]["score"] == pytest.approx(
        r2_score(y[test].numpy(), ref.predict(planted[test].numpy())), abs=1e-6
    )
    assert (
        by["trained"]["score"] > 0.95 and by["random_init"]["score"] < 0.1 and by["trained"]["shuffled"] < 0.1
    )
    with pytest.raises(ValueError, match="same number of rows"):
        probe_with_controls({"a": {"h": noise[:10]}}, {"q": y}, train=train, test=test)
