"""Analysis over activation stores larger than RAM: replay buffers on memory-mapped storage, streamed in chunks.

A store is anything that holds rows of a TensorDict: a TorchRL ``ReplayBuffer`` or its storage (a
``LazyMemmapStorage`` keeps one raw file per key), a memory-mapped ``TensorDict`` (``td.memmap_(folder)``) or an
ordinary one. Rows are read in consecutive chunks; from a memory-mapped file each chunk is read into fresh memory
with a plain file read, so the resident set stays near one chunk however large the store is (mapping the whole
file would count every page read towards it).

>>> rb = ReplayBuffer(storage=LazyMemmapStorage(10_000_000, scratch_dir="store"))
>>> rb.extend(batch)                                          # batches with ("rlhook", name) activations
>>> probe = fit_probe(RidgeProbe(alpha=1.0), rb, ("rlhook", "act1"), "velocity")   # one streaming pass
>>> stream_cka(rb, ("rlhook", "act0"), ("rlhook", "act1"))                         # exact linear CKA
>>> two_nn(sample(rb, [("rlhook", "act1")], 5000)["rlhook", "act1"])               # on a random sample

Probes fitted this way equal the in-memory fits: ``RidgeProbe`` accumulates its sufficient statistics chunk by
chunk (one pass), ``LogisticProbe`` runs the same L-BFGS with its loss and gradient summed over the chunks (one
pass per function evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.memmap import MemoryMappedTensor
from tensordict.utils import NestedKey

from rlhook.keys import get_key
from rlhook.latent.estimators import LogisticProbe, RidgeProbe
from rlhook.latent.sae import SparseAutoencoder, sae_step

__all__ = ["chunks", "fit_probe", "sample", "stream_cka", "train_sae_stream", "rows_of"]

DEFAULT_CHUNK = 65_536


def _table(source: object) -> TensorDictBase:
    """The TensorDict of rows behind a replay buffer, a storage or a TensorDict (valid rows only)."""
    storage = getattr(source, "storage", None)  # a ReplayBuffer
    storage = source if storage is None or callable(storage) else storage
    if isinstance(storage, TensorDictBase):
        return storage
    table = getattr(storage, "_storage", None)
    if not isinstance(table, TensorDictBase):
        raise TypeError(
            f"expected a ReplayBuffer, a TensorDict storage (LazyMemmapStorage, LazyTensorStorage) or a "
            f"TensorDict, got {type(source).__name__}"
        )
    return table[: len(storage)]


def rows_of(source: object) -> int:
    """Number of rows a store holds (every batch dim counts: a ``[n, T]`` store holds ``n * T`` rows)."""
    return _table(source).batch_size.numel()


def _file_of(leaf: torch.Tensor) -> str | None:
    """The file behind a whole, contiguous memory-mapped tensor (rows can be read from it), else None."""
    if isinstance(leaf, MemoryMappedTensor) and leaf.is_contiguous():
        return getattr(leaf, "filename", None)
    return None


def _read(leaf: torch.Tensor, nb: int, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of ``leaf`` with its first ``nb`` (batch) dims flattened into rows, in fresh memory;
    memory-mapped files are read, not mapped."""
    filename, feat = _file_of(leaf), leaf.shape[nb:]
    if filename is None:
        return leaf.reshape(-1, *feat)[start:stop].clone()
    row = math.prod(feat)
    out = torch.empty((stop - start, *feat), dtype=leaf.dtype)
    with open(filename, "rb", buffering=0) as f:
        f.seek((leaf.storage_offset() + start * row) * leaf.element_size())  # a slice starts inside the file
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise OSError(f"{filename}: expected {len(view)} bytes from row {start}, file ended at {got}")
            got += n
    return out


def chunks(
    source: object,
    keys: Sequence[NestedKey],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    start: int = 0,
    stop: int | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> Iterator[TensorDict]:
    """Consecutive rows ``[start, stop)`` of ``keys`` as TensorDicts of at most ``chunk_size`` rows; a store
    with several batch dims (``[n, T]`` rollouts extended as they came) is read as ``n * T`` rows.

    ``progress`` shows a bar (tqdm, when installed) over the rows.
    """
    table = _table(source)
    nb, total = table.batch_dims, table.batch_size.numel()
    leaves = {key: get_key(table, key, what="store") for key in keys}
    stop = total if stop is None else min(stop, total)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bar = _bar(stop - start, desc) if progress and stop - start > chunk_size else None
    try:
        for i in range(start, stop, chunk_size):
            j = min(i + chunk_size, stop)
            out = TensorDict({}, batch_size=[j - i])
            for key, leaf in leaves.items():
                out.set(key, _read(leaf, nb, i, j))
            yield out
            if bar is not None:
                bar.update(j - i)
    finally:
        if bar is not None:
            bar.close()


def _bar(total: int, desc: str | None):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a convenience: no tqdm, no bar
        return None
    return tqdm(total=total, desc=desc or "rows", unit="row", unit_scale=True, leave=False)


def sample(source: object, keys: Sequence[NestedKey], n: int, *, seed: int = 0) -> TensorDict:
    """``n`` rows drawn without replacement (reproducibly from ``seed``), in store order."""
    table = _table(source)
    nb, total = table.batch_dims, table.batch_size.numel()
    if n > total:
        raise ValueError(f"asked for {n} rows from a store of {total}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=g)[:n].sort().values
    out = TensorDict({}, batch_size=[n])
    for key in keys:
        leaf = get_key(table, key, what="store")
        if _file_of(leaf) is None:
            value = leaf.reshape(-1, *leaf.shape[nb:])[idx].clone()
        else:  # one read per run of consecutive rows: mapping the file would fault in pages around each row
            starts = torch.cat([idx[:1], idx[1:][idx[1:] != idx[:-1] + 1]])
            ends = torch.cat([idx[:-1][idx[1:] != idx[:-1] + 1] + 1, idx[-1:] + 1])
            value = torch.cat([_read(leaf, nb, int(a), int(b)) for a, b in zip(starts, ends)])
        out.set(key, value)
    return out


def _xy(chunk: TensorDict, x_key: NestedKey, y_key: NestedKey) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = chunk.get(x_key), chunk.get(y_key)
    return x.reshape(len(x), -1), (y.reshape(len(y)) if y.numel() == len(y) else y.reshape(len(y), -1))


def fit_probe(
    probe: RidgeProbe | LogisticProbe,
    source: object,
    x_key: NestedKey,
    y_key: NestedKey,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> RidgeProbe | LogisticProbe:
    """Fit a ridge or logistic probe of ``y_key`` on ``x_key`` (flattened per row) over the whole store.

    ``RidgeProbe``: one pass. ``LogisticProbe``: one pass for the classes, then one per L-BFGS evaluation.
    Returns the fitted probe (the same object).
    """

    def stream(desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for chunk in chunks(source, [x_key, y_key], chunk_size=chunk_size, progress=progress, desc=desc):
            yield _xy(chunk, x_key, y_key)

    if isinstance(probe, RidgeProbe):
        probe.reset()
        for x, y in stream("ridge"):
            probe.partial_fit(x, y)
        probe._solve()
        return probe
    if isinstance(probe, LogisticProbe):
        return probe.fit_chunks(lambda: stream("logistic"))
    raise TypeError(f"fit_probe streams RidgeProbe and LogisticProbe, got {type(probe).__name__}")


def stream_cka(
    source: object,
    x_key: NestedKey,
    y_key: NestedKey,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> float:
    """Linear CKA between two activation keys over every row, from feature-space statistics in one pass
    (``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``, centred by the store's means).

    Each chunk's products are taken in the activations' dtype around a shift (the first chunk's mean) and
    summed in float64: float32 stores give CKA to about 1e-6, float64 stores to rounding."""
    stats: dict[str, torch.Tensor] = {}
    n = 0
    for chunk in chunks(source, [x_key, y_key], chunk_size=chunk_size, progress=progress, desc="cka"):
        x, y = (chunk.get(k).reshape(len(chunk), -1) for k in (x_key, y_key))
        x, y = (v if v.is_floating_point() else v.double() for v in (x, y))
        if not stats:
            stats = {"mx": x.mean(0), "my": y.mean(0)}
        x, y = x - stats["mx"], y - stats["my"]
        for name, value in (
            ("sx", x.sum(0)),
            ("sy", y.sum(0)),
            ("xx", x.T @ x),
            ("yy", y.T @ y),
            ("yx", y.T @ x),
        ):
            stats[name] = stats.get(name, 0) + value.double()
        n += len(x)
    if n == 0:
        raise ValueError("the store holds no rows")
    mx, my = stats["sx"] / n, stats["sy"] / n
    xx = stats["xx"] - n * torch.outer(mx, mx)
    yy = stats["yy"] - n * torch.outer(my, my)
    yx = stats["yx"] - n * torch.outer(my, mx)
    return float(yx.pow(2).sum() / (xx.norm() * yy.norm()).clamp_min(1e-300))


def train_sae_stream(
    source: object,
    key: NestedKey,
    d_hidden: int,
    *,
    epochs: int = 1,
    batch_size: int = 256,
    chunk_size: int = DEFAULT_CHUNK,
    l1: float = 1e-3,
    lr: float = 3e-3,
    kind: str = "relu",
    k: int | None = None,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> SparseAutoencoder:
    """Train a sparse autoencoder on the rows of ``key`` (flattened per row) without loading the store.

    Each epoch reads the chunks in order and takes shuffled minibatches of ``batch_size`` inside each chunk;
    ``b_dec`` starts at the store's mean (one extra pass). Loss and decoder normalisation as ``train_sae``.
    The result depends on the rows and ``chunk_size``, not on where the rows live (memory or disk).
    """
    total, mean = 0, None
    for chunk in chunks(source, [key], chunk_size=chunk_size, progress=progress, desc="mean"):
        x = chunk.get(key).reshape(len(chunk), -1).double()
        mean = x.sum(0) if mean is None else mean + x.sum(0)
        total += len(x)
    if mean is None:
        raise ValueError("the store holds no rows")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = SparseAutoencoder(len(mean), d_hidden, kind=kind, k=k)
    with torch.no_grad():
        sae.b_dec.copy_(mean / total)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    history: list[float] = []
    with torch.enable_grad():
        for epoch in range(epochs):
            for chunk in chunks(source, [key], chunk_size=chunk_size, progress=progress, desc=f"sae {epoch}"):
                acts = chunk.get(key).reshape(len(chunk), -1).float()
                for idx in torch.randperm(len(acts), generator=g).split(batch_size):
                    history.append(sae_step(sae, opt, acts[idx], l1))
                    if on_step is not None:
                        on_step(len(history), history[-1])
    sae.history = history
    return sae
