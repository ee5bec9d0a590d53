"""Every README code block runs as written: Python blocks are executed in order in one namespace that holds
the objects the quick start talks about (``model``, ``critic``, ``batch``); commands are the
Makefile's targets and the benchmark scripts' own flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def namespace() -> dict:
    """What the quick start's prose assumes: an MLP ``model`` with ``layers.0..4``, a TorchRL ``critic`` and a
    ``batch`` of observations. The other blocks build what they use."""
    pytest.importorskip("torchrl")
    pytest.importorskip("mujoco")
    from torchrl.collectors import Collector

    from agents.pendulum.nets import make_actor, make_critic
    from envs.pendulum import make_env
    from tests.models import MLP

    torch.manual_seed(0)
    actor, critic = make_actor(), make_critic()
    batch = next(iter(Collector(make_env(seed=2), actor, frames_per_batch=32, total_frames=32)))
    return {"model": MLP(depth=5), "critic": critic, "batch": batch}


def test_python_blocks_run_as_written(capsys):
    ns = namespace()
    python = [code for lang, code in BLOCKS if lang == "python"]
    assert len(python) >= 3
    for i, code in enumerate(python):
        exec(compile(code, "README.md", "exec"), ns)
        if i == 0:  # the quick start
            assert ns["td"]["attr", "c2", "input"].shape == (8, 16)
            assert ns["out"]["cache_grad", "layers.0"].shape == (8, 32)
    assert ns["td"]["attr", "loss_critic", "observation"].shape == (200, 9)
    assert ns["batch"]["rlhook", "module.0.module.act1"].shape == (200, 256)
    assert ns["batch"]["rlhook", "attr", "observation"].shape == (200, 9)
    assert len(ns["store"]) == 400 and ns["few"]["rlhook", "module.0.module.act1"].shape == (100, 256)
    assert ns["probe"].coef_.shape == (256, 9) and 0 < ns["cka"] <= 1
    assert ns["out"]["l2", "1"].shape == (2, 8)
    assert "torch.Size([2, 8])" in capsys.readouterr().out


def test_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    for lang, code in BLOCKS:
        if lang == "bash":
            for line in code.strip().splitlines():
                cmd = line.split("#")[0].split()
                assert cmd[0] == "make" and cmd[1] in targets, line
    benches = re.findall(r"`python (benchmarks/\S+\.py)([^`]*)`", README)
    assert benches
    for script, flags in benches:
        source = (ROOT / script).read_text()
        for flag in re.findall(r"--[\w-]+", flags):
            assert f'"{flag}"' in source, f"{script} has no {flag}"
