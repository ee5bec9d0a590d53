"""Integrity of the shipped checkpoints: a SHA-256 digest of each, checked before it is loaded.

A flipped bit inside a ``.pt`` file otherwise loads different weights silently, and a damaged pickle header
makes torch suggest ``weights_only=False``, which is unsafe for a corrupt file. ``verify(path)`` raises
``CorruptCheckpointError`` naming the file for a shipped checkpoint whose digest differs; files that are not
shipped (your own runs) are not listed and load unchecked. ``load(path)`` is ``torch.load(weights_only=True)``
with those checks and a clear error for an unreadable file. Saving over a shipped checkpoint records its new
digest (``record``), so retraining keeps the manifest current.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

__all__ = ["CorruptCheckpointError", "MANIFEST", "digest", "load", "record", "verify"]

ROOT = Path(__file__).parent
#: ``<sha256>  <path relative to agents/>`` per line, as ``sha256sum`` writes it
MANIFEST = ROOT / "checkpoints.sha256"


class CorruptCheckpointError(ValueError):
    """A checkpoint whose bytes are not the ones shipped, or that cannot be read as a weights-only file."""


def digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes, hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _key(path: str | Path) -> str | None:
    try:
        return Path(path).resolve().relative_to(ROOT.resolve()).as_posix()
    except ValueError:
        return None


def _manifest() -> dict[str, str]:
    if not MANIFEST.exists():
        return {}
    entries = (line.split(maxsplit=1) for line in MANIFEST.read_text().splitlines() if line.strip())
    return {name.strip(): value for value, name in entries}


def verify(path: str | Path) -> Path:
    """``path``, after checking a shipped checkpoint's digest (others pass unchecked)."""
    path = Path(path)
    expected = _manifest().get(_key(path) or "")
    if expected is not None:
        actual = digest(path)
        if actual != expected:
            raise CorruptCheckpointError(
                f"{path} is not the shipped checkpoint: its SHA-256 is {actual}, the manifest "
                f"({MANIFEST.name}) records {expected}; restore the file (git checkout -- {path}) rather than "
                "loading it"
            )
    return path


def record(path: str | Path) -> None:
    """Store the digest of a shipped checkpoint that was just written (a no-op for other paths)."""
    key, entries = _key(path), _manifest()
    if key is None or key not in entries:
        return
    entries[key] = digest(path)
    MANIFEST.write_text("".join(f"{value}  {name}\n" for name, value in sorted(entries.items())))


def load(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` after ``verify``; an unreadable file raises
    ``CorruptCheckpointError`` naming it (never advice to unpickle arbitrary objects)."""
    path = verify(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a damaged file
        raise CorruptCheckpointError(
            f"{path} cannot be read as a weights-only checkpoint ({type(exc).__name__}); the file is damaged or "
            "not a checkpoint written by this project"
        ) from None
