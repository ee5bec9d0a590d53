"""The tasks, their libraries and parameter grids, scaled to a 2-core CPU.

The paper varies one parameter at a time around a default. Scaling here: integrated gradients use batch 100
(the paper's 1,000 divided by 10: one captum call on 1,000 x 50 steps x Linear(1000, 1000) x 10 takes about
half a minute on two cores) and widths up to 2,000 (not 5k/10k); LRP and the intervention chain keep the
paper's defaults (width 1,000, height 10, batch 1,000) but stop the batch axis at 10,000 (not 100,000);
GPT-2 stops at medium (large takes about a minute to initialise at random per process). The quick grid
keeps the default point and one other value of the axis that matters most for each task.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    module: str
    libs: tuple[str, ...]
    default: dict
    full: dict  # axis -> values, each varied alone around the default
    quick: dict
    check: dict  # the small configuration of the accuracy check
    # lib -> the rlhook variant doing the same work (default "rlhook"), and more variants to compare with
    ref: dict = field(default_factory=dict)
    also: dict = field(default_factory=dict)
    venv: str = "main"
    repeats: int = 3

    def reference(self, lib: str) -> str:
        return self.ref.get(lib, "rlhook")

    def references(self, lib: str) -> list[str]:
        return [self.reference(lib), *self.also.get(lib, [])]

    def grid(self, quick: bool) -> list[dict]:
        configs = [dict(self.default)]
        for axis, values in (self.quick if quick else self.full).items():
            for v in values:
                c = {**self.default, axis: v}
                if c not in configs:
                    configs.append(c)
        return configs


TASKS: dict[str, Task] = {
    "ig": Task(
        "benchmarks.paper.ig",
        ("rlhook", "rlhook_sum", "captum", "captum_add", "tdhook", "bare"),
        default={"width": 1000, "height": 10, "batch": 100},
        full={"width": [100, 1000, 2000], "height": [5, 10, 20], "batch": [10, 100, 500]},
        quick={"width": [100]},
        check={"width": 100, "height": 5, "batch": 10},
        ref={"rlhook": "rlhook", "captum": "rlhook_sum", "tdhook": "rlhook_sum", "bare": "rlhook_sum"},
        # the per-target maps against the summed single call, and the summed map against two calls
        also={"captum": ["rlhook"], "captum_add": ["rlhook_sum"], "tdhook": ["rlhook"]},
        repeats=2,
    ),
    "lrp": Task(
        "benchmarks.paper.lrp",
        ("rlhook", "zennit", "bare"),
        default={"width": 1000, "height": 10, "batch": 1000},
        full={"width": [100, 1000, 2000], "height": [5, 10, 20], "batch": [100, 1000, 10000]},
        quick={"batch": [100]},
        check={"width": 100, "height": 5, "batch": 10},
        venv="vision",
    ),
    "gpt2": Task(
        "benchmarks.paper.gpt2",
        ("rlhook", "nnsight", "transformer_lens", "bare"),
        default={"model": "gpt2", "batch": 50},
        full={"model": ["gpt2", "gpt2-medium"], "batch": [10, 50, 100, 500]},
        quick={"batch": [10]},
        check={"model": "gpt2", "batch": 2},
    ),
    "intervene": Task(
        "benchmarks.paper.intervene",
        ("rlhook", "nnsight", "bare"),
        default={"width": 1000, "height": 10, "batch": 1000, "chain": 5},
        full={"chain": [5, 10, 20, 50], "batch": [100, 1000, 10000], "width": [100, 1000, 2000]},
        quick={"chain": [50]},
        check={"width": 100, "height": 5, "batch": 10, "chain": 5},
    ),
    "rl_ig": Task(
        "benchmarks.paper.rl_ig",
        ("rlhook", "captum", "bare"),
        default={"k": 4, "batch": 256},
        full={"k": [2, 4, 8], "batch": [64, 256, 1024]},
        quick={"k": [8]},
        check={"k": 2, "batch": 8},
    ),
    "collector": Task(
        "benchmarks.paper.collector",
        ("rlhook", "tdhook", "bare"),
        default={"frames": 1000},
        full={"frames": [1000, 4000]},
        quick={},
        check={"frames": 50},
        repeats=2,
    ),
}


def label(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())
