"""What every task script shares: its command line, seeding, the spawn/run split and the result line.

A task script is started once per library, configuration, seed and phase. ``--phase spawn`` stops after the
imports and the model/data construction; ``--phase run`` goes on to do the work (``--repeats`` times), timing
each call in-process too: the first call apart (``work_s``), the median of the later ones (``warm_s``). The driver (``bench.py``) wraps each process in ``/usr/bin/time -v`` and reads the ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

Outputs = dict[str, torch.Tensor]


def parser(doc: str | None, libs: Sequence[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--lib", choices=list(libs), required=True)
    p.add_argument("--phase", choices=["spawn", "run"], default="run")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save", help="write the outputs to this .pt file (the accuracy check reads it)")
    p.add_argument("--repeats", type=int, default=1, help="calls of the work; the first is reported apart")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return torch.device(args.device)


def mlp(width: int, height: int) -> nn.Sequential:
    """``height`` x (``Linear(width, width)`` + ReLU), the paper's MLP."""
    layers: list[nn.Module] = []
    for _ in range(height):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def finish(args: argparse.Namespace, work: Callable[[], Outputs], extra: dict | None = None) -> None:
    """Do ``work`` once unless this is a spawn process; print the RESULT line; save outputs if asked."""
    dev = torch.device(args.device)
    result: dict = {"work_s": 0.0, **(extra or {})}
    if args.phase == "run":
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times, cpu = [], []
        for _ in range(max(1, args.repeats)):
            t0, c0 = time.perf_counter(), time.process_time()
            outputs = work()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)  # all threads' CPU seconds: less hurt by a busy machine
        result["work_s"], result["work_cpu_s"] = (
            times[0],
            cpu[0],
        )  # the first call, as a one-shot script pays it
        if len(times) > 1:
            result["warm_s"], result["warm_cpu_s"] = statistics.median(times[1:]), statistics.median(cpu[1:])
        if dev.type == "cuda":
            result["vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if args.save:
            torch.save({k: v.detach().float().cpu() for k, v in outputs.items()}, args.save)
    print("RESULT " + json.dumps(result), flush=True)
