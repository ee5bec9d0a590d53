"""TensorDict keys: lookups with errors that list what exists, and nested-key building."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tensordict import TensorDictBase
from tensordict.utils import NestedKey

__all__ = ["MissingKeyError", "get_key", "join", "present_keys", "source_td"]

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
