"""The library's shape: no private names across files, small files, one public name per concept."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import rlhook

ROOT = Path(rlhook.__file__).parent
FILES = sorted(ROOT.rglob("*.py"))


def test_no_file_imports_a_private_name_from_another_rlhook_file():
    offenders = []
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlhook"):
                offenders += [
                    f"{path.relative_to(ROOT)}: {a.name}" for a in node.names if a.name.startswith("_")
                ]
    assert offenders == []


def test_private_torch_api_lives_in_the_compat_module():
    users = [p.name for p in FILES if "torch._C" in p.read_text() and p.name != "compat.py"]
    assert users == []


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in FILES if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_public_name_means_two_things():
    """A public name exported by two rlhook packages must be the same object (a re-export)."""
    seen: dict[str, tuple[str, object]] = {}
    clashes = []
    for info in pkgutil.walk_packages(rlhook.__path__, "rlhook."):
        if info.name.startswith(("rlhook.plot", "rlhook.rl")) and importlib.util.find_spec("torchrl") is None:
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if name in seen and seen[name][1] is not obj:
                clashes.append(f"{name}: {seen[name][0]} and {info.name}")
            seen.setdefault(name, (info.name, obj))
    assert clashes == []
