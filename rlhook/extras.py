"""Lazy imports of optional extras, with an error that names the ``pip install`` that fixes it."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` naming ``pip install "rlhook[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module!r} is needed here but is not installed; install the {extra!r} extra: "
            f'pip install "rlhook[{extra}]"'
        ) from exc
