"""``HookedModule``: any ``nn.Module`` or ``TensorDictModuleBase`` seen as TensorDict in, TensorDict out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn

from rlhook.hooks import Hooks
from rlhook.keys import MissingKeyError, get_key, remember_given
from rlhook.paths import Path, patterned, resolve, resolve_one
from rlhook.run import Run

__all__ = ["HookedModule", "MissingKeyError", "get_key"]

_DEFAULT_OUT = ("output",)


class HookedModule(TensorDictModuleBase):
    """A model seen as TensorDict in, TensorDict out, with paths relative to that model.

    Args:
        model: an ``nn.Module`` or a ``TensorDictModuleBase`` (e.g. a TorchRL actor or critic).
        in_keys: for a plain module, the TensorDict keys passed positionally (default ``["input"]``) or a dict
            ``{td_key: forward_kwarg}`` (HF-style models). For a TensorDict module, the inputs that methods
            treat as *the* inputs (default: the module's own ``in_keys``).
        out_keys: for a plain module, where outputs go (default ``["output"]``): a tensor goes to the first key,
            a tuple to the keys in order, a dict output to ``{name: td_key}`` (or, with the default, to
            ``("output", name)``). For a TensorDict module, the outputs methods look at (default: its own).
        constants: keyword arguments passed to every forward of a plain module, e.g. ``{"use_cache": False}``
            for a Hugging Face model (kept when the hooked module is wrapped again, as methods do).
        track_given: record, for a TensorDict module, the values its forward overwrites (the batch's action)
            for the targets that read them (``keys.given``); a ``Recorder`` turns it off, nothing reads them
            there.

    ``optional`` holds the names that ``resolve`` found through a *pattern* (a regex): a run reports those that
    never ran (a ``ModuleList``, a dropout skipped in eval) with a ``NeverRanWarning`` instead of failing.

    Calling it with a TensorDict of any batch shape writes the outputs into that TensorDict and returns it.
    Plain modules see the batch dimensions flattened into one when there are several. It is itself a
    ``TensorDictModuleBase``, so a prepared method drops into TorchRL (``env.rollout``, collectors) as a policy.
    """

    def __init__(
        self,
        model: nn.Module,
        in_keys: Sequence[NestedKey] | Mapping[NestedKey, str] | None = None,
        out_keys: Sequence[NestedKey] | Mapping[str | int, NestedKey] | None = None,
        *,
        constants: Mapping[str, Any] | None = None,
        track_given: bool = True,
    ) -> None:
        super().__init__()
        default_out = out_keys is None
        if isinstance(model, HookedModule):
            constants = model.constants if constants is None else constants
            in_keys = model._in_spec if in_keys is None else in_keys
            default_out = default_out and model._default_out
            out_keys = model._out_spec if out_keys is None else out_keys
            model = model.model
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"HookedModule needs an nn.Module or TensorDictModuleBase, got {type(model).__name__}"
            )
        self.model = model
        self.is_td_module = isinstance(model, TensorDictModuleBase)
        if constants and self.is_td_module:
            raise TypeError(
                "constants=... are forward kwargs of a plain module; a TensorDict module reads a TensorDict"
            )
        self.constants: dict[str, Any] = dict(constants or {})
        self.optional: set[str] = set()
        self.track_given = track_given
        if self.is_td_module:
            in_keys = list(model.in_keys) if in_keys is None else in_keys
            out_keys = list(model.out_keys) if out_keys is None else out_keys
        self._in_spec = ["input"] if in_keys is None else in_keys
        self._out_spec = list(_DEFAULT_OUT) if out_keys is None else out_keys
        self._default_out = default_out and not self.is_td_module
        for spec, name in ((self._in_spec, "in_keys"), (self._out_spec, "out_keys")):
            if isinstance(spec, str | tuple):
                raise TypeError(
                    f"{name} must be a list of keys or a dict, not a single key {spec!r}: use [{spec!r}]"
                )

    @property
    def in_keys(self) -> list[NestedKey]:
        """The TensorDict keys this module reads."""
        return list(self._in_spec.keys() if isinstance(self._in_spec, Mapping) else self._in_spec)

    @property
    def out_keys(self) -> list[NestedKey]:
        """The TensorDict keys this module writes (for dict outputs with default keys: ``["output"]``)."""
        return list(self._out_spec.values() if isinstance(self._out_spec, Mapping) else self._out_spec)

    # -- paths ---------------------------------------------------------------------------------------------
    def resolve(self, path: Path | Sequence[Path]) -> list[tuple[str, nn.Module]]:
        """``[(name, module)]`` for a path (or paths) relative to the wrapped model (an element suffix such
        as ``"lstm@0"`` stays on the name). Names a pattern selected are added to ``optional``."""
        found = resolve(self.model, path)
        self.optional |= patterned(self.model, path)
        return found

    def resolve_one(self, path: Path) -> tuple[str, nn.Module]:
        """``(name, module)`` for a path that must name exactly one module."""
        return resolve_one(self.model, path)

    # -- calling ---------------------------------------------------------------------------------------------
    def forward(self, td: TensorDictBase) -> TensorDictBase:
        return self.model_forward(td)

    def model_forward(self, td: TensorDictBase) -> TensorDictBase:
        """Run the wrapped model on ``td`` and write its outputs into ``td`` (returned)."""
        if not isinstance(td, TensorDictBase):
            raise TypeError(f"a HookedModule is called with a TensorDict, got {type(td).__name__}")
        model = self._modules["model"]  # (self.model goes through nn.Module.__getattr__: 2 us per frame)
        if self.is_td_module:
            for key in model.in_keys:
                get_key(td, key)
            before = self._before(td, model.out_keys) if self.track_given else None
            out = model(td)
            out = td if out is None else out
            if before:
                remember_given(out, before)
            return out
        batch = td.batch_size
        flat = len(batch) > 1
        n = math.prod(batch)
        args, kwargs = [], dict(self.constants)
        for key in self.in_keys:
            value = get_key(td, key)
            if flat and isinstance(value, torch.Tensor):
                value = value.reshape(n, *value.shape[len(batch) :])
            if isinstance(self._in_spec, Mapping):
                kwargs[self._in_spec[key]] = value
            else:
                args.append(value)
        out = model(*args, **kwargs)
        for key, value in self._map_outputs(out):
            if flat and isinstance(value, torch.Tensor):
                value = value.reshape(*batch, *value.shape[1:])
            try:
                td.set(key, value)
            except RuntimeError as e:
                if not isinstance(value, torch.Tensor) or value.shape[: len(batch)] == batch:
                    raise
                raise ValueError(
                    f"the model's output {key!r} has shape {tuple(value.shape)}, which does not start with the "
                    f"batch shape {tuple(batch)}: outputs go into the batch's TensorDict. For one value of the "
                    "whole batch (a loss), return per-example outputs and reduce in the target, "
                    "target=Aggregate(lambda out: out['output'].sum()), or use a TensorDictModule that returns a "
                    "TensorDict with batch_size [] (as TorchRL losses do) and target=Aggregate(key)"
                ) from e
        return td

    @staticmethod
    def _before(td: TensorDictBase, out_keys: Sequence[NestedKey]) -> dict:
        """The outputs the forward will overwrite, e.g. the taken action; targets read them with keys.given
        ("the action in the batch", not the one just written)."""
        top = td.keys()
        return {k: td.get(k) for k in out_keys if (k in top if isinstance(k, str) else k in td)}

    def _map_outputs(self, out: Any) -> list[tuple[NestedKey, torch.Tensor]]:
        spec = self._out_spec
        if isinstance(out, torch.Tensor):
            keys = list(spec.values()) if isinstance(spec, Mapping) else spec
            return [(keys[0], out)]
        if isinstance(out, Mapping):
            if isinstance(spec, Mapping):
                missing = [k for k in spec if k not in out]
                if missing:
                    raise MissingKeyError(f"model outputs have no {missing}; they have {list(out.keys())}")
                return [(spec[k], out[k]) for k in spec]
            if self._default_out:
                return [(("output", str(k)), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
            missing = [k for k in spec if k not in out]
            if missing:
                raise MissingKeyError(f"model outputs have no {missing}; they have {list(out.keys())}")
            return [(k, out[k]) for k in spec]
        if isinstance(out, tuple | list):
            if isinstance(spec, Mapping):
                return [(key, out[int(i)]) for i, key in spec.items()]
            if self._default_out:
                return [(("output", str(i)), v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
            if len(spec) != len(out):
                raise ValueError(
                    f"the model returned {len(out)} outputs but out_keys has {len(spec)}: {spec}"
                )
            return list(zip(spec, out))
        raise TypeError(f"cannot map a model output of type {type(out).__name__} onto TensorDict keys")

    # -- get-set API -----------------------------------------------------------------------------------------
    def run(
        self, td: TensorDictBase | None = None, *, hooks: Hooks | None = None, reusable: bool = False
    ) -> Run:
        """Declare saves and sets in a ``with`` block; the model runs once when the block exits.

        >>> with hooked.run(td) as run:
        ...     h = run.save("layers.2")
        ...     run.set("layers.4", lambda output: torch.zeros_like(output))
        >>> run.output["output"], h.resolve()

        With ``hooks`` (a method's ``prepared.hooks``) the run is *lasting*: declared once, executed per call.
        With ``reusable=True`` it is declared once and ``run.execute(td)`` runs it per call, its hooks in place
        only during that call.
        """
        if hooks is None and not reusable and not isinstance(td, TensorDictBase):
            raise TypeError(f"a HookedModule is called with a TensorDict, got {type(td).__name__}")
        return Run(self, td, hooks=hooks, reusable=reusable)

    def extra_repr(self) -> str:
        return f"in_keys={self.in_keys}, out_keys={self.out_keys}"
