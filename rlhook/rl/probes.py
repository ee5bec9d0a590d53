"""Probing while an agent trains: every N batches, fit linear probes (layer x quantity) with their controls.

A probe score alone says little on low-dimensional control tasks (a random network is already a rich feature
map), so every score comes with three controls fitted on the same rows and split:

- ``random_init``: the same architecture at random initialisation (fixed seed), same layers;
- ``raw_obs``: the observation itself (no network);
- ``shuffled``: the trained layer with the training labels permuted (a control task; should score ~0).

The probes and controls come from ``rlhook.latent.probe_with_controls``, the function reports and users call.

>>> probes = TrainingProbes(actor, [r"module\\.0\\.module\\.act\\d"], labels=my_quantities, every=2)
>>> train(..., on_batch=probes)                 # plain loop: probes(batch, frames)
>>> trainer.register_op("batch_process", probes.trainer_op())   # TorchRL Trainer
>>> probes.table(); probes.plot("probe_curves.png")

Scores (test R^2 of closed-form ridge probes) are logged through a TorchRL logger (``CSVLogger`` by default)
as ``probe/{model}/{quantity}/{layer}``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path as FilePath
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.latent.caching import ActivationCaching
from rlhook.latent.controls import probe_with_controls, split_rows
from rlhook.paths import Path, resolve

__all__ = ["TrainingProbes"]

Labels = Callable[[TensorDictBase], dict[str, torch.Tensor]]


def _rows(x: torch.Tensor, batch_dims: int) -> torch.Tensor:
    return x.reshape(-1, *x.shape[batch_dims:]).flatten(1).double()


def _randomised(policy: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``policy`` with every parameterised layer re-initialised (fixed seed)."""
    clone = copy.deepcopy(policy)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in clone.modules():
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
                m.reset_parameters()
    return clone


class TrainingProbes:
    """Fit ridge probes of ``quantities`` on the activations of ``paths`` every ``every`` batches.

    Args:
        policy: the TensorDict module being trained (actor, critic or shared trunk); re-run on the batch's
            observations, so no recorder is needed (and recorded ``("rlhook", name)`` keys are used if present).
        paths: layers to probe (paths relative to ``policy``).
        labels: ``batch -> {quantity: tensor of the batch's shape (a trailing 1 is allowed)}``.
        every: probe every N-th call.
        obs_key: the observation key (the ``raw_obs`` control).
        alpha, test_fraction, seed: ridge penalty, held-out share of the rows, split/initialisation seed.
        logger: a TorchRL ``Logger``; ``None`` makes a ``CSVLogger`` under ``log_dir`` when given, else no logging.
    """

    def __init__(
        self,
        policy: TensorDictModuleBase,
        paths: Path | Sequence[Path],
        labels: Labels,
        *,
        every: int = 1,
        obs_key: NestedKey = "observation",
        alpha: float = 1.0,
        test_fraction: float = 0.25,
        seed: int = 0,
        logger: Any = None,
        log_dir: str | FilePath | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.policy, self.paths, self.labels, self.every = policy, paths, labels, every
        self.obs_key, self.alpha, self.test_fraction, self.seed = obs_key, alpha, test_fraction, seed
        self.random_policy = _randomised(policy, seed)
        if logger is None and log_dir is not None:
            from rlhook.extras import require

            loggers = require("torchrl.record.loggers", "rl")
            logger = loggers.CSVLogger(exp_name="probes", log_dir=str(log_dir))
        self.logger = logger
        self.history: list[dict[str, Any]] = []
        self._calls = 0

    def _activations(self, policy: nn.Module, batch: TensorDictBase) -> dict[str, torch.Tensor]:
        if policy is self.policy:  # a Recorder's ("rlhook", name) keys, when the batch has every layer
            names = [name for name, _ in resolve(policy, self.paths)]
            recorded = {n: batch.get(("rlhook", n), None) for n in names}
            if all(v is not None for v in recorded.values()):
                return recorded
        td = batch.select(*policy.in_keys).clone(False)
        with torch.no_grad(), ActivationCaching(self.paths).prepare(policy) as hooked:
            out = hooked(td)
        return {str(k): v for k, v in out["cache"].items()}

    def probe(self, batch: TensorDictBase, frames: int) -> list[dict[str, Any]]:
        """Probe this batch now; returns the rows added to ``history``."""
        nb = batch.batch_dims
        labels = {}
        for q, v in self.labels(batch).items():
            v = torch.as_tensor(v)
            if v.shape[:nb] != batch.batch_size:
                raise ValueError(
                    f"label {q!r} has shape {tuple(v.shape)}; expected the batch shape {tuple(batch.batch_size)}"
                )
            labels[q] = v.reshape(-1).double() if v.numel() == batch.numel() else None
            if labels[q] is None:
                raise ValueError(f"label {q!r} must hold one number per step, got shape {tuple(v.shape)}")
        finite = torch.stack([torch.isfinite(v) for v in labels.values()]).all(0)
        mask = batch.get(("rlhook", "recorded"), None)
        if mask is not None:  # frames a Recorder did not write (random exploration) hold zeros: left out
            finite = finite & mask.reshape(-1)
        labels = {q: v[finite] for q, v in labels.items()}
        trained = {k: _rows(v, nb)[finite] for k, v in self._activations(self.policy, batch).items()}
        random = {k: _rows(v, nb)[finite] for k, v in self._activations(self.random_policy, batch).items()}
        obs = _rows(batch.get(self.obs_key), nb)[finite]
        train, test = split_rows(len(obs), self.test_fraction, self.seed)
        features = {"trained": trained, "random_init": random, "raw_obs": {"observation": obs}}
        rows = []
        for r in probe_with_controls(
            features,
            labels,
            train=train,
            test=test,
            estimator="ridge",
            alpha=self.alpha,
            seed=self.seed + frames,
        ):
            scores = [(r["features"], r["score"])] + (
                [("shuffled", r["shuffled"])] if r["features"] == "trained" else []
            )
            for model, score in scores:
                rows.append(
                    {
                        "frames": frames,
                        "model": model,
                        "layer": r["layer"],
                        "quantity": r["quantity"],
                        "r2": score,
                    }
                )
                if self.logger is not None:
                    self.logger.log_scalar(f"probe/{model}/{r['quantity']}/{r['layer']}", score, step=frames)
        self.history.extend(rows)
        return rows

    def __call__(self, batch: TensorDictBase, frames: int) -> None:
        """The plain-loop hook: ``on_batch(batch, frames)``; probes every ``every``-th call."""
        self._calls += 1
        if (self._calls - 1) % self.every == 0:
            self.probe(batch, frames)

    def trainer_op(self) -> Callable[[TensorDictBase], TensorDictBase]:
        """A ``batch_process`` op for ``torchrl.trainers.Trainer.register_op`` (counts frames itself)."""
        frames = [0]

        def batch_process(batch: TensorDictBase) -> TensorDictBase:
            frames[0] += batch.numel()
            self(batch, frames[0])
            return batch

        return batch_process

    def table(self, frames: int | None = None) -> list[dict[str, Any]]:
        """Rows ``{frames, quantity, layer, trained, random_init, shuffled, raw_obs, selectivity}``: each trained
        score next to its controls (``selectivity`` = trained - max(random_init, raw_obs))."""
        at = max(r["frames"] for r in self.history) if frames is None else frames
        scores = {(r["model"], r["layer"], r["quantity"]): r["r2"] for r in self.history if r["frames"] == at}
        raw = {q: v for (m, _, q), v in scores.items() if m == "raw_obs"}
        out = []
        for (model, layer, q), score in scores.items():
            if model != "trained":
                continue
            rnd, shf = scores["random_init", layer, q], scores["shuffled", layer, q]
            out.append(
                {
                    "frames": at,
                    "quantity": q,
                    "layer": layer,
                    "trained": score,
                    "random_init": rnd,
                    "raw_obs": raw[q],
                    "shuffled": shf,
                    "selectivity": score - max(rnd, raw[q]),
                }
            )
        return out

    def plot(self, path: str | FilePath) -> FilePath:
        """Probe R^2 vs frames: one panel per quantity, a line per layer, controls dashed (PNG)."""
        from rlhook.plot.curves import probe_curves

        return probe_curves(self.history, path)
