"""``Recorder``: a picklable TensorDictModule around a policy that writes activations into the rollout.

Collectors run the policy under ``no_grad`` and, for multi-process collectors, in spawned workers: the only
capture that reaches the batch is what the policy writes into its output TensorDict. The recorder does that:

>>> policy = Recorder(actor, [r"module\\.0\\.module\\.act\\d"])
>>> collector = Collector(env, policy, frames_per_batch=200, total_frames=1000)
>>> batch["rlhook", "module.0.module.act1"]          # [T, 256], next to the observations that caused it

Its capture is one reusable run of the core, declared once: its hooks live only for the duration of each
forward (registered and removed through ``Hooks``), so the recorder pickles with the policy, leaves nothing on
the user's modules between calls, and its output keys are declared up front (the collector's dry run sees
them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch.nn.utils.rnn import PackedSequence

from rlhook import elements
from rlhook.compat import is_vmapped
from rlhook.hooked import HookedModule
from rlhook.paths import Path, resolve
from rlhook.proxy import Proxy
from rlhook.run import Run

__all__ = ["Recorder"]


class Recorder(TensorDictModuleBase):
    """Run ``policy`` and write the outputs of the modules at ``paths`` to ``(*prefix, name)``.

    Args:
        policy: any TensorDictModule policy (a TorchRL actor, a ``TensorDictSequential``...).
        paths: module paths relative to ``policy`` (dotted, regex, list).
        prefix: key prefix of the recorded activations (default ``("rlhook",)``).

    Every frame it writes also gets ``(*prefix, "recorded") = True``: frames a collector fills without calling
    the policy (random exploration, ``init_random_frames``) keep False there, so their zero activations can be
    told apart (``batch[batch["rlhook", "recorded"]]``).

    The recorder is transparent: its module tree is the policy's own (no ``policy.`` level), so its
    ``state_dict``, parameters and ``TensorDict.from_module`` are the bare policy's, also inside a parent module
    or a TorchRL loss. ``policy = Recorder(policy, ...)`` on one line of a script is enough: the collector and
    the loss that share the policy take the recorder, and every checkpoint keeps its keys.

    Reads the policy's ``in_keys``; writes its ``out_keys`` plus ``(*prefix, name)`` for each recorded module,
    shaped like the TensorDict's batch plus the activation's own dims. A policy that flattens several batch
    dims into one is unflattened; one that adds a leading dim of its own to an unbatched frame (a conv net fed
    one ``(C, H, W)`` board) keeps it: ``(1, C', H', W')`` per frame.
    """

    def __init__(
        self, policy: TensorDictModuleBase, paths: Path | Sequence[Path], prefix: NestedKey = "rlhook"
    ):
        super().__init__()
        if not isinstance(policy, TensorDictModuleBase):
            raise TypeError(
                f"Recorder wraps a TensorDictModule policy, got {type(policy).__name__}; wrap plain modules with "
                "tensordict.nn.TensorDictModule first"
            )
        # the recorder shows the policy's own module tree, not the policy as a child: state_dict keys,
        # named_parameters, TensorDict.from_module (TorchRL losses' functional params), .to() and
        # load_state_dict all see exactly what the bare policy shows, so adding a recorder changes no
        # checkpoint and no other line of a training script
        object.__setattr__(self, "policy", policy)
        for shared in ("_modules", "_parameters", "_buffers", "_non_persistent_buffers_set"):
            object.__setattr__(self, shared, getattr(policy, shared))
        self.prefix = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        self._targets = resolve(policy, paths)  # resolved once; plain list, so not registered twice
        # the get-set core over the same policy (nothing reads the outputs a forward overwrites here)
        object.__setattr__(self, "_hooked", HookedModule(policy, track_given=False))
        self.names = [name for name, _ in self._targets]
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys) + [self.key(n) for n in self.names] + [self.mask_key]

    def train(self, mode: bool = True) -> Recorder:
        self.policy.train(mode)  # the policy's own flag too (its children are the recorder's)
        return super().train(mode)

    @property
    def mask_key(self) -> tuple[str, ...]:
        """``(*prefix, "recorded")``: True on every frame this recorder wrote. Frames a collector fills without
        calling the policy (``init_random_frames``) hold False there and zeros in the activation keys."""
        return (*self.prefix, "recorded")

    def key(self, name: str) -> tuple[str, ...]:
        """The TensorDict key of the module recorded as ``name``."""
        return (*self.prefix, name)

    def _capture(self) -> tuple[Run, dict[str, Proxy]]:
        """The reusable run (declared on first use, per process: it is not pickled or copied) and its saves."""
        capture = self.__dict__.get("_capture_run")
        if capture is None:
            with self._hooked.run(reusable=True) as run:
                saved = {name: run.save(site, detach=True) for name, site in zip(self.names, self._targets)}
            capture = self.__dict__["_capture_run"] = (run, saved)
        return capture

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_capture_run", None)  # closures over this object's proxies: rebuilt where it is used
        return state

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        run, saved = self._capture()
        try:
            out = run.execute(td)
            values = run.collect(saved)
        finally:
            run.clear()  # hold no activations between calls
        batch, device = out.batch_size, out.device
        products = {}
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                if isinstance(value, PackedSequence):
                    raise TypeError(
                        f"Recorder: module {name!r} returned a PackedSequence (a recurrent module in recurrent mode "
                        "packs the sequences of a batch); record it step by step (as collectors run it), or record "
                        "the module's own output key"
                    )
                raise TypeError(
                    f"Recorder: module {name!r} returned {type(value).__name__}, not a tensor; name an element of "
                    f"it, e.g. '{elements.first_of(name)}'"
                )
            if is_vmapped(value):
                raise RuntimeError(
                    f"Recorder: module {name!r} ran under torch.vmap; its activation cannot leave the vmapped "
                    "call. Record outside vmap (e.g. GAE(..., deactivate_vmap=True))"
                )
            if len(batch) > 1 and value.shape[: len(batch)] != batch and value.shape[:1] == (batch.numel(),):
                value = value.reshape(*batch, *value.shape[1:])  # the policy flattened the batch dims
            products[name] = value
        on = {} if device is None else {"device": device}  # (passing device=None costs 3 us per frame)
        products["recorded"] = torch.ones(batch, dtype=torch.bool, **on)
        prefix = self.prefix
        sub = out.get(prefix, None) if prefix[0] in out.keys() else None
        if sub is None:  # one nested TensorDict for all the activations: fewer key walks per frame
            out.set(prefix, TensorDict(products, batch_size=batch, **on))
        else:
            for name, value in products.items():
                sub.set(name, value)
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # behave like the policy for what collectors ask of it (spec, get_dist, ...)
            policy = self.__dict__.get("policy")
            if name.startswith("_") or policy is None:
                raise
            return getattr(policy, name)
