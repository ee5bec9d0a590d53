"""The paper benchmark's task scripts at their smallest configuration, with the libraries CI has (rlhook,
captum, torch): each runs, the libraries agree, and the driver's summary and tables hold together; the README's tables are the recorded results."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

from benchmarks.paper import readme
from benchmarks.paper.accuracy import compare
from benchmarks.paper.bundle_size import markdown
from benchmarks.paper.grids import TASKS
from benchmarks.paper.measure import parse_time
from benchmarks.paper.summary import summarise, write_tables

CASES = {
    "ig": ["rlhook", "rlhook_sum", "captum", "captum_add", "bare"],
    "lrp": ["rlhook", "bare"],
    "intervene": ["rlhook", "bare"],
    "rl_ig": ["rlhook", "captum", "bare"],
}


def run_task(task: str, lib: str, tmp_path, capsys) -> str:
    module = importlib.import_module(TASKS[task].module)
    path = str(tmp_path / f"{task}-{lib}.pt")
    argv = ["x", "--lib", lib, "--threads", "1", "--repeats", "2", "--save", path]
    for k, v in TASKS[task].check.items():
        argv += [f"--{k}", str(v)]
    threads = torch.get_num_threads()
    with torch.random.fork_rng(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        module.main()
    torch.set_num_threads(threads)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    assert result["work_s"] > 0 and result["warm_s"] > 0
    return path


@pytest.mark.parametrize("task", list(CASES))
def test_smallest_configuration_runs_and_agrees(task, tmp_path, capsys):
    pytest.importorskip("captum")
    if task == "rl_ig":
        pytest.importorskip("torchrl")
    saved = {lib: run_task(task, lib, tmp_path, capsys) for lib in CASES[task]}
    result = compare(saved)
    assert all(r["ok"] for r in result.values()), result
    assert result["rlhook"]["max_err"], "rlhook compared nothing"


def test_summary_pairs_rounds_and_writes_tables(tmp_path):
    rows = []
    for rnd in range(3):
        for lib, t in (("rlhook", 1.0), ("captum", 2.0 + rnd)):
            for phase in ("spawn", "run"):
                rows.append(
                    dict(
                        task="rl_ig",
                        config="k=2",
                        lib=lib,
                        round=rnd,
                        phase=phase,
                        wall_s=t,
                        work_s=t,
                        warm_s=t,
                        rss_mb=100.0,
                    )
                )
    summary = summarise(rows, {"rl_ig": TASKS["rl_ig"]})
    warm = next(r for r in summary if r["lib"] == "captum" and r["metric"] == "warm")
    assert (warm["ratio"], warm["ratio_min"], warm["ratio_max"]) == (3.0, 2.0, 4.0)
    meta = dict(
        command="python -m benchmarks.paper.bench", grid="quick", seeds=[1, 2, 3], threads=2, device="cpu"
    )
    write_tables(tmp_path / "t.md", summary, meta)
    assert "3.00x [2.00, 4.00]" in (tmp_path / "t.md").read_text()


def test_parse_time_reads_gnu_time_verbose():
    text = (
        "\tUser time (seconds): 1.50\n\tSystem time (seconds): 0.25\n\tPercent of CPU this job got: 150%\n"
        "\tElapsed (wall clock) time (h:mm:ss or m:ss): 0:01.20\n\tMaximum resident set size (kbytes): 204800\n"
    )
    assert parse_time(text) == pytest.approx(
        dict(user_s=1.5, sys_s=0.25, cpu_pct=150.0, wall_s=1.2, rss_mb=200.0, cpu_s=1.75)
    )


def test_readme_tables_are_the_recorded_results():
    text = readme.README.read_text()
    assert readme.render(text) == text, "README tables differ from benchmarks/paper/results/: run readme.py"
    for file, drop_bare in readme.SECTIONS.values():
        assert readme.table(readme.RESULTS / file, drop_bare) in text
    # the bundle table is the one bundle_size.py makes from its recorded rows
    rows = json.loads((readme.RESULTS / "bundle.json").read_text())
    assert markdown(rows) == (readme.RESULTS / "bundle.md").read_text()


def test_render_rewrites_only_the_marked_tables(tmp_path):
    header = "| task | lib |\n|---|---|\n"
    (tmp_path / "ratios.md").write_text("`cmd`: ratios\n\n" + header + "| ig | bare |\n| ig | captum |\n")
    (tmp_path / "ratios-1thread.md").write_text(header + "| ig | tdhook |\n")
    (tmp_path / "bundle.md").write_text("| venv | MB |\n|---|---:|\n| + rlhook | 960 |\n")
    block = lambda name, body: f"<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->"  # noqa: E731
    old = "\n\n".join(
        [
            "intro",
            block("ratios", "| old |"),
            "prose",
            block("ratios-1thread", "| old |"),
            block("bundle", ""),
        ]
    )
    new = readme.render(old, tmp_path)
    assert new.startswith("intro\n\n<!-- bench:ratios -->\n| task | lib |\n|---|---|\n| ig | captum |\n<!--")
    assert (
        "| bare |" not in new and "| old |" not in new and "| + rlhook | 960 |" in new and "\nprose\n" in new
    )
    assert readme.render(new, tmp_path) == new
    with pytest.raises(ValueError, match="bench:bundle"):
        readme.render(old.replace("<!-- /bench:bundle -->", ""), tmp_path)
