"""TensorDict keys: lookups with errors that list what exists, and nested-key building."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from tensordict import TensorDictBase
from tensordict.utils import NestedKey

__all__ = [
    "MissingKeyError",
    "clone_given",
    "get_key",
    "given",
    "join",
    "keep_given",
    "present_keys",
    "remember_given",
    "source_td",
]

_MISSING = object()


class MissingKeyError(KeyError):
    """A missing TensorDict key; the message lists the keys that exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def present_keys(td: TensorDictBase) -> list[str]:
    """The leaf keys of ``td``, sorted, as strings (for error messages)."""
    return sorted(str(k) for k in td.keys(include_nested=True, leaves_only=True))


def get_key(td: TensorDictBase, key: NestedKey, what: str = "input") -> Any:
    """``td[key]`` with an error that lists the keys that exist."""
    value = td.get(key, _MISSING)
    if value is _MISSING:
        raise MissingKeyError(f"{what} key {key!r} is not in the TensorDict; its keys are {present_keys(td)}")
    return value


#: per output TensorDict (by identity, held weakly): the values a TensorDict module overwrote, as given
_GIVEN: dict[int, tuple[weakref.ref, dict]] = {}


def _flat(key: NestedKey) -> NestedKey:
    return key if isinstance(key, str) else (key[0] if len(key) == 1 else tuple(key))


def remember_given(out: TensorDictBase, values: dict) -> None:
    """Record the inputs a module's forward is about to overwrite in ``out`` (the latest forward's)."""
    i = id(out)

    def forget(ref: weakref.ref, i: int = i) -> None:  # only this entry: ids are reused after collection
        if _GIVEN.get(i, (None,))[0] is ref:
            del _GIVEN[i]

    _GIVEN[i] = (weakref.ref(out, forget), {_flat(k): v for k, v in values.items()})


def keep_given(src: TensorDictBase, dst: TensorDictBase) -> TensorDictBase:
    """``dst``, a copy of ``src`` (a clone of a forward's output, the clean inputs of a patched run), with
    ``src``'s record of the values its forward overwrote: targets on ``dst`` still read the batch's action."""
    entry = _GIVEN.get(id(src))
    if entry is not None and entry[0]() is src and dst is not src:
        remember_given(dst, entry[1])
    return dst


def clone_given(td: TensorDictBase) -> TensorDictBase:
    """``td.clone(False)`` (a forward's output kept aside) with ``td``'s record of the values its forward
    overwrote (see ``keep_given``)."""
    return keep_given(td, td.clone(False))


def given(td: TensorDictBase, key: NestedKey, what: str = "input") -> Any:
    """``td[key]`` as the batch gave it: when a TensorDict module's forward overwrote the key (a Q-value actor
    writing its greedy action, an actor sampling a new one), the value from before that forward."""
    entry = _GIVEN.get(id(td))
    if entry is not None and entry[0]() is td and _flat(key) in entry[1]:
        return entry[1][_flat(key)]
    return get_key(td, key, what)


def join(*parts: NestedKey) -> NestedKey:
    """One nested key from keys and key parts: ``join("attr", ("obs", "x"))`` is ``("attr", "obs", "x")``;
    a single string part stays a string."""
    out: list[str] = []
    for p in parts:
        out.extend((p,) if isinstance(p, str) else p)
    return out[0] if len(out) == 1 else tuple(out)


def source_td(
    td: TensorDictBase, in_keys: Sequence[NestedKey], source: NestedKey = "patched"
) -> TensorDictBase:
    """A shallow copy of ``td`` whose inputs ``k`` are replaced by ``(source, k)`` where present, without
    ``source`` itself: the inputs of a contrast run (patching source, steering positives ...)."""
    src = td.exclude(source).copy()
    found = False
    for k in in_keys:
        v = td.get(join(source, k), None)
        if v is not None:
            src.set(k, v)
            found = True
    if not found:
        wanted = [join(source, k) for k in in_keys]
        raise MissingKeyError(
            f"no {source!r} input: the TensorDict needs at least one of {wanted} next to the inputs; its keys "
            f"are {present_keys(td)}"
        )
    return src
