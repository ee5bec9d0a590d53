"""Contracts every method keeps, one test per contract, parametrised over ``tests/registry.py``.

After success and after every failure (an error in the model, in the user's callable, in the ``with`` block,
a ``KeyboardInterrupt``, a failing undo on exit) the model has no hook of ours, the same parameters bitwise,
the same flags and submodules. Results do not depend on batching, chunking, on which other model the same
configured method is prepared on, on an earlier fault, or on a pickle round trip. The input contract (a
TensorDict, unbatched and empty batches) holds for all.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from tensordict import TensorDictBase

from rlhook import hook_count
from tests.latent.helpers import assert_unchanged, snapshot
from tests.registry import ROWS, Boom, boom, data, model

NAMES = list(ROWS)


def products(out: TensorDictBase, given: TensorDictBase) -> dict:
    """The leaves a call wrote (everything not in the input TensorDict)."""
    keys = set(given.keys(include_nested=True, leaves_only=True))
    return {k: out.get(k) for k in out.keys(include_nested=True, leaves_only=True) if k not in keys}


def assert_same(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys(), sorted(map(str, set(a) ^ set(b)))
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


def run(method, m, td: TensorDictBase) -> dict:
    with method.prepare(m) as hooked:
        return products(hooked(td.clone()), td)


@pytest.mark.parametrize("name", NAMES)
def test_success_leaves_the_model_as_it_was(name):
    m = model()
    before = snapshot(m)
    got = run(ROWS[name].make(), m, data())
    assert got, "the method wrote nothing"
    assert_unchanged(m, before)


def _set_callable(method, attr: str, fn) -> None:
    obj, *path = attr.split(".")
    holder = getattr(method, obj) if path else method
    setattr(holder, path[0] if path else obj, fn)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("where", ["model", "callable", "block", "interrupt", "undo"])
def test_failure_leaves_the_model_as_it_was(name, where):
    row, m = ROWS[name], model()
    before = snapshot(m)
    method = row.make()
    if where == "callable":
        if row.callable_attr is None:
            pytest.skip("the method takes no user callable")
        _set_callable(method, row.callable_attr, boom)
    exc = KeyboardInterrupt if where == "interrupt" else Boom
    with pytest.raises(exc):
        with method.prepare(m) as hooked:
            if where == "undo":
                hooked.hooks.undo(lambda: (_ for _ in ()).throw(Boom("in an undo")))
            m.fail = where == "model"
            hooked(data())
            if where in ("block", "interrupt"):
                raise exc("in the with block")
    m.fail = False
    assert_unchanged(m, before)


@pytest.mark.parametrize("name", [n for n in NAMES if ROWS[n].per_example])
def test_batched_equals_one_by_one(name):
    m, td = model(), data((5,))
    whole = run(ROWS[name].make(), m, td)
    for i in range(5):
        one = run(ROWS[name].make(), m, td[i : i + 1])
        assert_same(one, {k: v[i : i + 1] for k, v in whole.items()}, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", [n for n in NAMES if ROWS[n].chunk])
def test_chunked_equals_unchunked(name):
    m, td = model(), data((5,))
    method = ROWS[name].make()
    whole = run(method, m, td)
    for option, value in ROWS[name].chunk.items():
        setattr(method.options, option, value)
    assert_same(run(method, m, td), whole, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_one_configured_method_on_two_models_at_once_and_nested(name):
    a, b, td = model(0), model(3), data()
    alone_a, alone_b = run(ROWS[name].make(), a, td), run(ROWS[name].make(), b, td)
    method = ROWS[name].make()
    with method.prepare(a) as on_a, method.prepare(b) as on_b:
        got_a = products(on_a(td.clone()), td)
        got_b = products(on_b(td.clone()), td)
        if not method.edits_weights:  # weight edits compose when nested on one model, by design
            with method.prepare(a) as inner:
                assert_same(products(inner(td.clone()), td), alone_a)
        assert_same(products(on_a(td.clone()), td), alone_a)  # the outer one still works after the inner
    assert_same(got_a, alone_a)
    assert_same(got_b, alone_b)
    assert hook_count(a) == hook_count(b) == 0


@pytest.mark.parametrize("name", NAMES)
def test_reuse_after_a_fault(name):
    m, td = model(), data()
    method = ROWS[name].make()
    with pytest.raises(Boom):
        with method.prepare(m) as hooked:
            m.fail = True
            hooked(td.clone())
    m.fail = False
    assert_same(run(method, m, td), run(ROWS[name].make(), m, td))


@pytest.mark.parametrize("name", NAMES)
def test_pickled_method_gives_the_same_products(name):
    m, td = model(), data()
    method = ROWS[name].make()
    clone = pickle.loads(pickle.dumps(method))
    assert_same(run(clone, m, td), run(method, m, td))
    with method.prepare(m):  # a method pickles while prepared too: it holds configuration only
        pickle.dumps(method)


@pytest.mark.parametrize("name", NAMES)
def test_a_plain_tensor_is_refused_clearly(name):
    with ROWS[name].make().prepare(model()) as hooked:
        with pytest.raises(TypeError, match="TensorDict"):
            hooked(torch.randn(4, 16, dtype=torch.float64))


@pytest.mark.parametrize("name", [n for n in NAMES if ROWS[n].per_example])
def test_an_unbatched_tensordict_is_a_batch_of_one(name):
    m, td = model(), data((1,))
    one = run(ROWS[name].make(), m, td)
    single = run(ROWS[name].make(), m, td[0])
    assert_same(single, {k: v[0] for k, v in one.items()})


@pytest.mark.parametrize("name", [n for n in NAMES if ROWS[n].empty])
def test_an_empty_batch_gives_empty_products(name):
    m, full = model(), data((3,))
    shapes = {k: v.shape[1:] for k, v in run(ROWS[name].make(), m, full).items()}
    got = run(ROWS[name].make(), m, full[:0])
    assert {k: v.shape for k, v in got.items()} == {k: (0, *s) for k, s in shapes.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    m, td = model(), data()
    cpu = run(ROWS[name].make(), m, td)
    for batched in (False, True):  # looped and batched vector-Jacobian products alike
        method = ROWS[name].make()
        if hasattr(method, "options"):
            method.options.batched = batched
        cuda = run(method, copy.deepcopy(m).cuda(), td.cuda())
        assert_same({k: v.cpu() for k, v in cuda.items()}, cpu, rtol=1e-7, atol=1e-9)


def test_the_registry_covers_every_public_method():
    import rlhook.attribution as attribution
    import rlhook.latent as latent
    import rlhook.rl as rl
    import rlhook.weights as weights
    from rlhook import Method

    public = {
        obj
        for mod in (attribution, latent, weights, rl)
        for obj in (getattr(mod, n) for n in mod.__all__)
        if isinstance(obj, type) and issubclass(obj, Method)
    }
    covered = {type(row.make()) for row in ROWS.values()}
    exempt = {
        attribution.GradientMethod,  # the base
        attribution.SmoothGradSquared,  # SmoothGrad(kind=...)
        attribution.VarGrad,
        attribution.ExpectedGradients,  # GradientSHAP with the batch as baselines
        rl.LossAttribution,  # needs a TorchRL loss: tests/rl/test_loss_and_explain.py
    }
    assert public - covered - exempt == set(), "add a row to tests/registry.py"
