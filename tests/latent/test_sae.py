"""Sparse autoencoders: training on planted sparse data, splicing vs a hand-written forward."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from rlhook.latent import ActivationCaching, SAESplice, SparseAutoencoder, train_sae
from tests.latent.helpers import check_lifecycle
from tests.models import MLP


def sparse_data(n=2000, d=16, n_feat=24, active=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_feat, generator=g).argsort(1)[:, :active]
    coef = torch.zeros(n, n_feat).scatter(1, idx, torch.rand(n, active, generator=g) + 0.5)
    return coef @ dirs


@pytest.mark.parametrize(("kind", "k"), [("relu", None), ("topk", 3)])
def test_sae_learns_sparse_code(kind, k):
    x = sparse_data()
    sae = train_sae(x, 48, kind=kind, k=k, l1=0.2, steps=800, lr=3e-3)
    with torch.no_grad():
        z = sae.encode(x)
        fvu = (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu < 0.15
    l0 = (z != 0).float().sum(1).mean()
    assert l0 <= (3 if kind == "topk" else 12)
    assert sae.history[-1] < sae.history[0]
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48))


def test_splice_matches_reference_forward():
    torch.manual_seed(0)
    model = MLP(n_in=8, width=16)
    x = torch.randn(40, 8)
    td = TensorDict({"input": x}, [40])
    with torch.no_grad(), ActivationCaching("layers.1").prepare(model) as hooked:
        acts = hooked(td.clone())["cache", "layers.1"]
    sae = train_sae(acts, 32, kind="topk", k=6, steps=300)
    with torch.no_grad():
        with SAESplice("layers.1", sae).prepare(model) as hooked:
            out = hooked(td.clone())
        h1 = model.layers[1](model.layers[0](x))
        ref = model.head(model.layers[2](sae(h1)))
        torch.testing.assert_close(out["output"], ref)
        torch.testing.assert_close(out["sae", "layers.1", "output_change", "output"], ref - model(x))
        torch.testing.assert_close(out["sae", "layers.1", "mse"], (sae(h1) - h1).pow(2).mean(1))
        assert (out["sae", "layers.1", "l0"] <= 6).all()
        fvu = (sae(h1) - h1).pow(2).sum() / (h1 - h1.mean(0)).pow(2).sum()
        torch.testing.assert_close(out["sae", "layers.1", "fvu"][0], fvu)
    check_lifecycle(SAESplice("layers.1", sae), model, td)
    with pytest.raises(ValueError, match="topk"):
        SparseAutoencoder(4, 8, kind="topk")
