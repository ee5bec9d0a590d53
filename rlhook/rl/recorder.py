"""``Recorder``: a picklable TensorDictModule around a policy that writes activations into the rollout.

Collectors run the policy under ``no_grad`` and, for multi-process collectors, in spawned workers: the only
capture that reaches the batch is what the policy writes into its output TensorDict. The recorder does that:

>>> policy = Recorder(actor, [r"module\\.0\\.module\\.act\\d"])
>>> collector = Collector(env, policy, frames_per_batch=200, total_frames=1000)
>>> batch["rlhook", "module.0.module.act1"]          # [T, 256], next to the observations that caused it

Its hooks live only for the duration of each forward (registered and removed through ``Hooks``), so the
recorder pickles with the policy, leaves nothing on the user's modules between calls, and its output keys
are declared up front (the collector's dry run sees them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from rlhook import elements
from rlhook.compat import is_vmapped
from rlhook.hooked import HookedModule
from rlhook.paths import Path, resolve

__all__ = ["Recorder"]


def _into_policy(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """When a module holding a Recorder loads, move the recorder's keys under its ``policy.`` child."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "policy.")]:
        state_dict[prefix + "policy." + key[len(prefix) :]] = state_dict.pop(key)


class Recorder(TensorDictModuleBase):
    """Run ``policy`` and write the outputs of the modules at ``paths`` to ``(*prefix, name)``.

    Args:
        policy: any TensorDictModule policy (a TorchRL actor, a ``TensorDictSequential``...).
        paths: module paths relative to ``policy`` (dotted, regex, list).
        prefix: key prefix of the recorded activations (default ``("rlhook",)``).

    Every frame it writes also gets ``(*prefix, "recorded") = True``: frames a collector fills without calling
    the policy (random exploration, ``init_random_frames``) keep False there, so their zero activations can be
    told apart (``batch[batch["rlhook", "recorded"]]``).

    The recorder is transparent to checkpoints: its ``state_dict`` is the policy's (no ``policy.`` prefix, also
    inside a parent module), so a checkpoint of the bare policy loads into it and back.

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
        self.policy = policy
        self.prefix = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        self._targets = resolve(policy, paths)  # resolved once; plain list, so not registered twice
        # the get-set core over the same policy, kept out of the module tree (state_dict stays the policy's)
        object.__setattr__(self, "_hooked", HookedModule(policy))
        self.register_load_state_dict_pre_hook(
            _into_policy
        )  # nested loads: keys as the bare policy wrote them
        self.names = [name for name, _ in self._targets]
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys) + [self.key(n) for n in self.names] + [self.mask_key]

    def state_dict(
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> Any:
        """The policy's own state dict: a checkpoint of the policy loads into the recorder and back."""
        return self.policy.state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load a state dict written by the policy (or by this recorder: the same keys)."""
        return self.policy.load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def mask_key(self) -> tuple[str, ...]:
        """``(*prefix, "recorded")``: True on every frame this recorder wrote. Frames a collector fills without
        calling the policy (``init_random_frames``) hold False there and zeros in the activation keys."""
        return (*self.prefix, "recorded")

    def key(self, name: str) -> tuple[str, ...]:
        """The TensorDict key of the module recorded as ``name``."""
        return (*self.prefix, name)

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        with self._hooked.run(td) as run:
            saved = {name: run.save(site, detach=True) for name, site in zip(self.names, self._targets)}
        out = run.output
        values = run.collect(saved)
        batch = out.batch_size
        products = {}
        for name, value in values.items():
            if isinstance(value, PackedSequence):
                raise TypeError(
                    f"Recorder: module {name!r} returned a PackedSequence (a recurrent module in recurrent mode packs "
                    "the sequences of a batch); record it step by step (as collectors run it), or record the "
                    "module's own output key"
                )
            if not isinstance(value, torch.Tensor):
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
        products["recorded"] = torch.ones(batch, dtype=torch.bool, device=out.device)
        sub = out.get(self.prefix, None)
        if sub is None:  # one nested TensorDict for all the activations: fewer key walks per frame
            out.set(self.prefix, TensorDict(products, batch_size=batch, device=out.device))
        else:
            for name, value in products.items():
                sub.set(name, value)
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # behave like the policy for what collectors ask of it (spec, get_dist, ...)
            modules = self.__dict__.get("_modules", {})
            if name.startswith("_") or "policy" not in modules:
                raise
            return getattr(modules["policy"], name)
