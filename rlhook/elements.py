"""Elements: which part of a structured module output (or input) a path means.

``nn.LSTM`` returns ``(output, (h, c))``; every Hugging Face attention module a tuple; HF blocks may return
``ModelOutput`` dicts. A path names one part with an ``@`` suffix of dot-separated indices (integers index
tuples and lists, names index dicts)::

    "lstm@0"        the LSTM's output sequence
    "lstm@1.0"      its final hidden state h
    "attn@0"        the attention output of an HF attention module
    "block@hidden_states"
    "attn.o_proj@input.0"   positional input 0 of the module (e.g. per-head outputs before a projection)

Every method that captures or replaces module outputs (caching, patching, steering, layer attribution,
probes, ``Recorder``) goes through ``Run``, which reads and writes elements with ``select``/``replace``;
replacing an element rebuilds the structure around the new value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "SEP",
    "INPUT",
    "Element",
    "split",
    "parse",
    "select",
    "replace",
    "describe",
    "first_of",
    "of_input",
]

#: separates a module path from its element
SEP = "@"
Element = tuple[int | str, ...]
#: an element starting with this name, then an index, means a positional *input* of the module
INPUT = "input"


def of_input(element: Element) -> tuple[int, Element] | None:
    """``(index, rest)`` when ``element`` names positional input ``index`` (``("input", 0, ...)``), else
    ``None``."""
    if len(element) >= 2 and element[0] == INPUT and isinstance(element[1], int):
        return element[1], element[2:]
    if element[:1] == (INPUT,):
        raise ValueError(f"'{SEP}{INPUT}' needs the index of the input after it, e.g. 'proj{SEP}{INPUT}.0'")
    return None


def parse(text: str) -> Element:
    """``"1.0"`` -> ``(1, 0)``; ``"hidden_states"`` -> ``("hidden_states",)``."""
    if not text:
        raise ValueError(f"empty element after {SEP!r}: write e.g. 'lstm{SEP}0' or 'block{SEP}hidden_states'")
    parts = text.split(".")
    if any(p == "" for p in parts):
        raise ValueError(f"malformed element {text!r}: dot-separated indices or names, e.g. '1.0'")
    return tuple(int(p) if p.lstrip("-").isdigit() else p for p in parts)


def split(path: Any) -> tuple[Any, Element]:
    """``(module path, element)`` of a path; paths without ``@`` (and non-strings) select nothing: ``()``."""
    if isinstance(path, str) and SEP in path:
        base, _, text = path.rpartition(SEP)
        return base, parse(text)
    return path, ()


def describe(element: Element) -> str:
    """The suffix that names ``element`` in a path (``""`` for the whole value)."""
    return SEP + ".".join(str(p) for p in element) if element else ""


def _step(value: Any, part: int | str, where: str) -> Any:
    if isinstance(part, int) and isinstance(value, tuple | list):
        if not -len(value) <= part < len(value):
            raise IndexError(f"{where}: element {part} does not exist; the output has {len(value)} elements")
        return value[part]
    if isinstance(value, Mapping):
        if part in value:
            return value[part]
        if isinstance(part, int) and hasattr(value, "to_tuple"):  # HF ModelOutput: positional access
            return _step(value.to_tuple(), part, where)
        raise KeyError(f"{where}: element {part!r} does not exist; the output has {list(value.keys())}")
    raise TypeError(
        f"{where}: cannot take element {part!r} of a {type(value).__name__}; integers index tuples/lists, "
        "names index dicts"
    )


def select(value: Any, element: Element, where: str = "module output") -> Any:
    """The part of ``value`` that ``element`` names (``value`` itself for ``()``)."""
    for part in element:
        value = _step(value, part, where)
    return value


def replace(value: Any, element: Element, new: Any, where: str = "module output") -> Any:
    """``value`` with the part named by ``element`` replaced by ``new`` (a new structure; ``new`` for ``()``)."""
    if not element:
        return new
    part, rest = element[0], element[1:]
    inner = replace(_step(value, part, where), rest, new, where)
    if isinstance(value, tuple):
        items = list(value)
        items[part] = inner
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        items = list(value)
        items[part] = inner
        return items
    if isinstance(value, Mapping):
        copy = value.copy() if hasattr(value, "copy") else dict(value)
        copy[part] = inner
        return copy
    raise TypeError(f"{where}: cannot write element {part!r} back into a {type(value).__name__}")


def first_of(name: str) -> str:
    """The path naming the first element of what ``name`` names (for error messages): ``"lstm"`` ->
    ``"lstm@0"``, ``"lstm@1"`` -> ``"lstm@1.0"``."""
    return name + (".0" if SEP in name else SEP + "0")
