"""The device check (bench/gpu_check.py) run for real on CPU at tiny sizes, so that the script a
GPU session runs cannot rot: every part, its JSON and its text table. One subprocess, one
thread: about 15 s."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = [0.3, 0.8]
MEMBERS = [1, 2]
TINY = [
    "--device", "cpu", "--threads", "1", "--model", "tiny", "--p", "23", "--lr", "5e-3",
    "--members", ",".join(map(str, MEMBERS)), "--bench-steps", "3", "--rounds", "1",
    "--fractions", ",".join(map(str, FRACTIONS)), "--fig2-seeds", "2", "--fig2-steps", "200",
    "--fig2-eval-every", "50", "--compile-steps", "60", "--compile", "eager",
    "--time-budget-s", "300",
]  # fmt: skip


def run_check(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", str(out), *TINY, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_every_part_runs_on_cpu_and_writes_its_figures(tmp_path):
    done = run_check(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "results.json").read_text())

    checks = {c["name"]: c for c in data["checks"]}
    assert set(checks) == {
        "stacked_vs_alone", "member_vs_alone", "checkpoint_resume", "retire_mid_run",
    }  # fmt: skip
    assert all(c["passed"] for c in checks.values()), checks
    # on CPU the per-member path, a resumed checkpoint and the survivors of a retirement are ==
    for name in ("member_vs_alone", "checkpoint_resume", "retire_mid_run"):
        assert checks[name]["tolerance"] == "bitwise (==)"
        assert checks[name]["bitwise_equal"] and checks[name]["max_abs_weights"] == 0.0
    # ... and the stacked path rounds differently: within its recorded tolerance
    stacked = checks["stacked_vs_alone"]
    assert stacked["max_rel_curve"] <= stacked["tolerance"]["rel"]
    assert stacked["max_abs_weights"] <= stacked["tolerance"]["weights_abs"]
    assert checks["checkpoint_resume"]["resumed_from_step"] == 10
    retired = checks["retire_mid_run"]["retired"]
    assert retired["1"]["status"] == "diverged" and retired["2"]["last_step"] < 30
    assert checks["retire_mid_run"]["retired_weights_untouched"]

    rows = data["throughput"]["rows"]
    assert [r["K"] for r in rows] == MEMBERS
    assert all(r["population"]["member_steps_per_s"] > 0 and r["speedup"] > 0 for r in rows)

    fig2 = data["fig2"]
    assert fig2["complete"] and [r["frac"] for r in fig2["rows"]] == FRACTIONS
    assert all(r["seeds"] == 2 for r in fig2["rows"])
    assert len(fig2["members"]) == 4 and not fig2["readme_figures_apply"]

    variants = {v["variant"]: v for v in data["compile"]["variants"]}
    assert list(variants) == ["population", "no-shared-prefix", "compile:eager"]
    for v in variants.values():
        assert "error" not in v, v
        assert v["steady_member_steps_per_s"] > 0
        assert v.get("max_rel_first_loss_vs_population", 0.0) < 1e-4
    assert data["stopped"] == {}

    report = (tmp_path / "report.txt").read_text()
    for line in ("pass  stacked_vs_alone", "throughput", "Figure 2", "compile:eager"):
        assert line in report
    assert report in done.stdout


def test_a_spent_time_budget_stops_the_parts_and_keeps_what_they_measured(tmp_path):
    """No time at all: the correctness checks still run in full (they are the point), the
    timed parts stop at their first chance, say so, and the JSON is whole."""
    done = run_check(tmp_path, "--time-budget-s", "0", "--parts", "throughput,fig2,compile")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["stopped"]) == {"throughput", "fig2", "compile"}
    assert data["throughput"]["rows"] == []
    assert not data["fig2"]["complete"]
    assert "stopped early: fig2" in (tmp_path / "report.txt").read_text()
