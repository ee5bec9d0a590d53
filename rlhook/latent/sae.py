"""Sparse autoencoders: train a small ReLU or TopK SAE on cached activations and splice it into the model.

>>> sae = train_sae(acts, d_hidden=128, kind="topk", k=8)         # acts: (N, d) from ("cache", name)
>>> with SAESplice("layers.2", sae).prepare(model) as hooked:
...     td = hooked(td)      # outputs with layers.2 replaced by its reconstruction, plus ("sae", ...) reports
"""

from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDictBase
from torch import nn

from rlhook.hooks import Hooks
from rlhook.methods import Method, Prepared
from rlhook.paths import Path

__all__ = ["SAESplice", "SparseAutoencoder", "train_sae"]

Kind = Literal["relu", "topk"]


class SparseAutoencoder(nn.Module):
    """``x -> z = act((x - b_dec) W_enc + b_enc) -> x_hat = z W_dec + b_dec`` on the last dim of ``x``.

    ``kind="relu"``: ``act = relu`` (sparsity from an L1 penalty in training); ``kind="topk"``: relu then only
    the ``k`` largest latents of each row are kept. Decoder rows are kept at unit norm by ``train_sae``.
    """

    def __init__(self, d_in: int, d_hidden: int, *, kind: Kind = "relu", k: int | None = None) -> None:
        super().__init__()
        if kind not in ("relu", "topk"):
            raise ValueError(f"kind must be 'relu' or 'topk', not {kind!r}")
        if kind == "topk" and (k is None or not 1 <= k <= d_hidden):
            raise ValueError(f"kind='topk' needs 1 <= k <= d_hidden ({d_hidden}), got k={k}")
        self.kind, self.k = kind, k
        w = torch.randn(d_in, d_hidden) / d_in**0.5
        self.W_dec = nn.Parameter(w.T / w.T.norm(dim=1, keepdim=True))
        self.W_enc = nn.Parameter(self.W_dec.detach().T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_hidden))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``(..., d_hidden)``."""
        z = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        if self.kind == "topk":
            v, i = z.topk(self.k, dim=-1)
            z = torch.zeros_like(z).scatter(-1, i, v)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def sae_step(sae: SparseAutoencoder, opt: torch.optim.Optimizer, x: torch.Tensor, l1: float) -> float:
    """One Adam step on a minibatch ``x (n, d)``: squared reconstruction error (plus ``l1 * |z|_1`` for
    ``kind="relu"``), then decoder rows renormalised. Returns the loss."""
    z = sae.encode(x)
    loss = (sae.decode(z) - x).pow(2).sum(-1).mean()
    if sae.kind == "relu":
        loss = loss + l1 * z.abs().sum(-1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
    return loss.item()


def train_sae(
    acts: torch.Tensor,
    d_hidden: int,
    *,
    kind: Kind = "relu",
    k: int | None = None,
    l1: float = 1e-3,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
) -> SparseAutoencoder:
    """Train an SAE on ``acts (N, d)`` (more dims are flattened into rows) with Adam.

    Loss: mean squared reconstruction error (plus ``l1 * mean |z|_1`` for ``kind="relu"``). ``b_dec`` starts
    at the data mean; decoder rows are renormalised after every step. ``sae.history`` holds the losses.
    """
    acts = acts.detach().reshape(-1, acts.shape[-1]).float()
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = SparseAutoencoder(acts.shape[1], d_hidden, kind=kind, k=k).to(acts.device)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    history = []
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(0, len(acts), (min(batch_size, len(acts)),), generator=g).to(acts.device)
            history.append(sae_step(sae, opt, acts[idx], l1))
    sae.history = history
    return sae


class SAESplice(Method):
    """Replace the output of the module at ``paths`` (one path) by ``sae(output)`` and report.

    Reads the model inputs. Writes the spliced model's outputs under the usual out keys and, for the module
    ``name``: ``("sae", name, "mse")`` (per example, mean squared error over features),
    ``("sae", name, "fvu")`` (fraction of variance unexplained over the batch, expanded),
    ``("sae", name, "l0")`` (active latents per example, averaged over extra dims) and
    ``("sae", name, "output_change", out_key)`` (spliced minus clean outputs).
    """

    keys = {"sae": "sae"}

    def __init__(self, paths: Path, sae: nn.Module) -> None:
        self.paths, self.sae = paths, sae

    def setup(self, hooked: Prepared, hooks: Hooks) -> None:
        hooked.state.site = hooked.resolve_one(self.paths)

    def apply(self, hooked: Prepared, td: TensorDictBase) -> TensorDictBase:
        site, out_keys = hooked.state.site, hooked.out_keys
        name = site[0]
        with hooked.run(td.copy()) as run:
            saved = run.save(site)
        clean = run.output
        x = run.collect({name: saved})[name]
        with hooked.run(td) as run:
            run.set(site, self.sae)
        spliced = run.output
        with torch.no_grad():
            z = self.sae.encode(x) if hasattr(self.sae, "encode") else None
            x_hat = self.sae(x)
            batch = td.batch_size
            n = max(1, td.numel())
            err = (x_hat - x).detach().pow(2).reshape(n, -1)
            var = (x - x.reshape(n, -1).mean(0).reshape(x.shape[1:])).pow(2).reshape(n, -1)
            td.set(self.key("sae", name, "mse"), err.mean(1).reshape(batch))
            td.set(self.key("sae", name, "fvu"), (err.sum() / var.sum().clamp_min(1e-12)).expand(batch))
            if z is not None:
                l0 = (z != 0).float().reshape(n, -1, z.shape[-1]).sum(-1).mean(1)
                td.set(self.key("sae", name, "l0"), l0.reshape(batch))
        for k in out_keys:
            td.set(self.key("sae", name, "output_change", k), spliced.get(k) - clean.get(k))
        return td
