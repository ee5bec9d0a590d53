"""Path grammar: how users name submodules.

A *path* is one of

- a dotted path with optional ``[i]`` indexing and quoted names: ``"trunk.2"``, ``"blocks[3].conv"``,
  ``'heads["value"].0'``;
- a full-match regular expression over dotted module names: ``r"layers\\.\\d+"`` (a string that is not a
  valid dotted path of the model is tried as a regex; ``re.Pattern`` objects always are);
- the ``nn.Module`` object itself.

A string path may end in an *element*, ``"lstm@1.0"``: the part of a structured output it means (see
``rlhook.elements``); resolved names keep the suffix.

Paths are relative to the user's model. When that model is a ``TensorDictModule`` the paths of the module
it wraps work too (``"0"`` as well as ``"module.0"``). Resolution walks ``named_modules`` and never
evaluates code.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

from torch import nn

from rlhook import elements

__all__ = ["Path", "PathError", "resolve", "resolve_one", "canonical", "patterned"]

Path = str | re.Pattern | nn.Module

_TOKEN = re.compile(
    r"""
    (?P<name>[A-Za-z_][A-Za-z0-9_]*|\d+)      # attribute or bare index
    | \[(?P<index>-?\d+)\]                    # [3]
    | \[(?P<q>["'])(?P<quoted>(?:(?!(?P=q)).)*)(?P=q)\]  # ["a.b"]
    | (?P<dot>\.)
    """,
    re.VERBOSE,
)


class PathError(LookupError):
    """An unknown or malformed module path; the message lists the closest existing names."""


def _parse(path: str) -> list[str] | None:
    """Split a dotted path into name parts, or ``None`` if it is not in the dotted grammar."""
    parts: list[str] = []
    pos, expect_name = 0, True
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None:
            return None
        if m.group("dot"):
            if expect_name:
                return None
            expect_name = True
        elif m.group("name") is not None:
            if not expect_name:
                return None
            parts.append(m.group("name"))
            expect_name = False
        else:  # bracket access binds to the preceding part
            if expect_name and parts:
                return None
            parts.append(m.group("index") if m.group("index") is not None else m.group("quoted"))
            expect_name = False
        pos = m.end()
    return parts if parts and not expect_name else None


def _child(module: nn.Module, part: str) -> nn.Module | None:
    children = module._modules
    if part in children:
        return children[part]
    if part.lstrip("-").isdigit() and isinstance(module, nn.ModuleList | nn.Sequential):
        idx = int(part)
        if -len(module) <= idx < len(module):
            return module[idx]
    return None


def _walk(root: nn.Module, parts: Sequence[str]) -> nn.Module | None:
    module: nn.Module | None = root
    for part in parts:
        module = _child(module, part)
        if module is None:
            return None
    return module


def _roots(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model itself, then the module a TensorDictModule wraps (so its paths work without a prefix)."""
    roots = [("", model)]
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and model._modules.get("module") is inner:
        roots.append(("module.", inner))
    return roots


def canonical(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model`` (``""`` for the model itself)."""
    for name, mod in model.named_modules(remove_duplicate=False):
        if mod is module:
            return name
    raise PathError(f"{type(module).__name__} object is not a submodule of the {type(model).__name__} model")


def _names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def _error(model: nn.Module, path: object, why: str) -> PathError:
    names = _names(model)
    close = difflib.get_close_matches(str(path), names, n=5, cutoff=0.4)
    hint = f" Closest names: {close}." if close else f" Some names: {names[:8]}."
    return PathError(f"{why} in {type(model).__name__}: {path!r}.{hint}")


def resolve(model: nn.Module, path: Path | Iterable[Path]) -> list[tuple[str, nn.Module]]:
    """Resolve ``path`` (or several) to ``[(name, module), ...]`` in ``model``.

    Names are the user's spelling for dotted paths (normalised: ``"blocks[3]"`` becomes ``"blocks.3"``) and
    the matched dotted names for regexes. Raises ``PathError`` naming the closest modules when nothing matches.
    """
    if isinstance(path, str | re.Pattern | nn.Module):
        paths: list[Path] = [path]
    else:
        paths = list(path)
        if not paths:
            raise PathError("an empty list of module paths was given; pass at least one path")
    found: dict[str, nn.Module] = {}
    for p in paths:
        for name, module in _resolve_single(model, p):
            found.setdefault(name, module)
    return list(found.items())


def resolve_one(model: nn.Module, path: Path) -> tuple[str, nn.Module]:
    """Resolve a path that must name exactly one module."""
    matches = resolve(model, path)
    if len(matches) != 1:
        raise PathError(
            f"{path!r} matches {len(matches)} modules ({[n for n, _ in matches][:8]}); a single module is "
            "needed here: use a dotted path or a narrower regex"
        )
    return matches[0]


def patterned(model: nn.Module, path: Path | Iterable[Path]) -> set[str]:
    """The names that ``resolve(model, path)`` gives which a *pattern* selected (a regex, compiled or a string
    that is not a dotted path of the model), as opposed to modules named one by one: a run reports modules
    of the first kind that never ran instead of failing (``Run.collect``)."""
    paths = [path] if isinstance(path, str | re.Pattern | nn.Module) else list(path)
    names: set[str] = set()
    for p in paths:
        base = elements.split(p)[0]
        if isinstance(base, nn.Module):
            continue
        if isinstance(base, str):
            parts = _parse(base)
            if parts is not None and any(_walk(root, parts) is not None for _, root in _roots(model)):
                continue
        names.update(name for name, _ in _resolve_single(model, p))
    return names


def _resolve_single(model: nn.Module, path: Path) -> list[tuple[str, nn.Module]]:
    base, element = elements.split(path)
    if element:  # "lstm@1.0": the element names a part of the module's output, kept on the name
        suffix = elements.describe(element)
        return [(name + suffix, module) for name, module in _resolve_module(model, base)]
    return _resolve_module(model, path)


def _resolve_module(model: nn.Module, path: Path) -> list[tuple[str, nn.Module]]:
    if isinstance(path, nn.Module):
        return [(canonical(model, path), path)]
    if isinstance(path, re.Pattern):
        return _regex(model, path, path)
    if not isinstance(path, str):
        raise PathError(
            f"a module path must be a str, a compiled regex or an nn.Module, not {type(path).__name__}"
        )
    parts = _parse(path)
    if parts is not None:
        for _, root in _roots(model):
            module = _walk(root, parts)
            if module is not None:
                return [(".".join(parts), module)]
    try:
        pattern = re.compile(path)
    except re.error as exc:
        raise _error(model, path, f"not a module path nor a valid regex ({exc})") from None
    return _regex(model, pattern, path)


def _regex(model: nn.Module, pattern: re.Pattern, shown: object) -> list[tuple[str, nn.Module]]:
    matches: list[tuple[str, nn.Module]] = []
    for _, root in _roots(model):
        matches = [(n, m) for n, m in root.named_modules() if n and pattern.fullmatch(n)]
        if matches:
            break
    if not matches:
        raise _error(model, shown, "no module matches the path")
    return matches
