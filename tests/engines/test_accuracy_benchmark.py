"""benchmarks/accuracy.py end to end on a tiny grid: it runs, reports, and continues its runs."""

import argparse
import gzip
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import fedlabel
from fedlabel.config import config_from_dict

ROOT = Path(__file__).resolve().parents[2]
GRID = [
    "--alphas",
    "0.1",
    "--label-ratios",
    "0.05",
    "--methods",
    "fedavg",
    "--last",
    "1",
    "--eval-every",
    "1",
    "--jobs",
    "2",
    "--extra",
    "data.num_clients=6",
    "clients_per_round=2",
    "data.train_samples=1200",
    "algorithm.local_steps=2",
    "device=cpu",
]
TINY = ["--seeds", "0", "1", "--sweep", "beta=0.5,0.9", "--sweep-rounds", "0", *GRID]


def _bench(tmp_path, *args):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "accuracy.py"),
        *args,
        "--out",
        str(tmp_path / "runs"),
        "--report",
        str(tmp_path / "docs" / "results.md"),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def _rounds(tmp_path, name):
    return json.loads((tmp_path / "runs" / name / "summary.json").read_text())["rounds"]


def test_tiny_grid_reports_then_extends_its_runs(tmp_path):
    proc = _bench(tmp_path, "--rounds", "2", *TINY)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "docs" / "results.md").read_text()
    assert (
        "Runs completed: 6 of 6." in report
    )  # FedAvg 100% and 5% x 2 seeds, FedLabel beta 0.5 and 0.9
    row = next(
        line for line in report.splitlines() if line.startswith("| FedAvg, labeled part only |")
    )
    assert "±" in row and "(n=" not in row
    assert "| beta | 0.5 | 0.9 |" in report
    assert (tmp_path / "docs" / "figures" / "results_dir0.1_5pct.png").stat().st_size > 0
    before = _rounds(tmp_path, "a0.1_fedavg_5_s0")

    # more rounds: every run continues from its checkpoint; the first two rounds stay as they were
    proc = _bench(tmp_path, "--rounds", "3", *TINY)
    assert proc.returncode == 0, proc.stderr
    after = _rounds(tmp_path, "a0.1_fedavg_5_s0")
    assert [r["round"] for r in after] == [1, 2, 3] and after[:2] == before
    assert "Runs completed: 6 of 6." in (tmp_path / "docs" / "results.md").read_text()


def test_report_only_marks_missing_seeds(tmp_path):
    proc = _bench(tmp_path, "--rounds", "2", "--seeds", "0", "1", "--no-sweeps", *GRID)
    assert proc.returncode == 0, proc.stderr
    # seed 1 as if computed on another machine: listed there, and left out of the wall time
    path = tmp_path / "runs" / "a0.1_fedavg_5_s1" / "summary.json"
    s1 = json.loads(path.read_text())
    path.write_text(
        json.dumps({**s1, "environment": [{**s1["environment"][0], "cpu": "Elsewhere CPU"}]})
    )
    s0 = json.loads((tmp_path / "runs" / "a0.1_fedavg_5_s0" / "summary.json").read_text())
    # ask for a third seed that has not run: the report says so instead of failing
    proc = _bench(
        tmp_path, "--rounds", "2", "--seeds", "0", "1", "2", "--no-sweeps", "--report-only", *GRID
    )
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "docs" / "results.md").read_text()
    row = next(
        line for line in report.splitlines() if line.startswith("| FedAvg, labeled part only |")
    )
    assert "(n=2)" in row
    assert "Runs completed: 4 of 6." in report
    wall = [
        line for line in report.splitlines() if line.startswith("| FedAvg, labeled part only | 2 |")
    ]
    median_round = statistics.median(r["seconds"] for r in s0["rounds"])
    assert wall and f"| 2 | {s0['wall_seconds']:.0f} | {median_round:.2f} |" in wall[0]
    assert "| Elsewhere CPU (torch " in report


def test_archived_summaries_alone_rewrite_the_report_and_are_not_run_again(tmp_path):
    archive = tmp_path / "archive"
    proc = _bench(
        tmp_path, "--rounds", "2", "--seeds", "0", "--no-sweeps", "--archive", str(archive), *GRID
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in archive.iterdir()) == [
        "a0.1_fedavg_100_s0.json.gz",
        "a0.1_fedavg_5_s0.json.gz",
    ]
    summary = (tmp_path / "runs" / "a0.1_fedavg_5_s0" / "summary.json").read_bytes()
    assert gzip.decompress((archive / "a0.1_fedavg_5_s0.json.gz").read_bytes()) == summary
    row = next(
        line
        for line in (tmp_path / "docs" / "results.md").read_text().splitlines()
        if line.startswith("| FedAvg, la")
    )

    # a fresh clone: no run folders, only the archive; and a STOP file: no new run may start
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "STOP").touch()
    proc = _bench(
        tmp_path,
        "--rounds",
        "2",
        "--seeds",
        "0",
        "1",
        "--no-sweeps",
        "--archive",
        str(archive),
        *GRID,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 of 4 runs to do" in proc.stdout and "not started: a0.1_fedavg_5_s1" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["STOP"]
    report = (tmp_path / "docs" / "results.md").read_text()
    assert "Runs completed: 2 of 4." in report
    seed0 = row.split(" | ")[1].strip(" |")  # the seed-0 cell, now marked as one seed of two
    assert f"| FedAvg, labeled part only | {seed0} (n=1) |" in report

    # a damaged archive file is named, and its run counts as not run (it would run again)
    (archive / "a0.1_fedavg_100_s0.json.gz").write_bytes(b"not gzip")
    proc = _bench(
        tmp_path,
        "--rounds",
        "2",
        "--seeds",
        "0",
        "--no-sweeps",
        "--archive",
        str(archive),
        "--report-only",
        *GRID,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"unreadable, ignored: {archive / 'a0.1_fedavg_100_s0.json.gz'}" in proc.stderr
    assert "Runs completed: 1 of 2." in (tmp_path / "docs" / "results.md").read_text()


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "accuracy_bench", ROOT / "benchmarks" / "accuracy.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cross_silo_grid_runs_the_cross_silo_experiment(bench):
    args = argparse.Namespace(
        experiment="cross_silo",
        seeds=[0],
        rounds=100,
        extra=["device=cpu"],
        no_reference=False,
        no_sweeps=True,
        sweep=[],
        sweep_setting=[0.1, 0.05],
        sweep_rounds=0,
    )
    grid, sweep_runs, _ = bench.build_grid(args, ["fedavg", "fedlabel"], [(0.1, 0.05)])
    assert sorted(r.name for r in grid.values()) == [
        "a0.1_fedavg_100_s0",
        "a0.1_fedavg_5_s0",
        "a0.1_fedlabel_5_s0",
    ]
    assert not sweep_runs
    for run in grid.values():
        built = config_from_dict(fedlabel.compose(run.command(Path("/tmp/x"))[2:]))
        got = (
            built.model.name,
            built.engine.name,
            built.data.num_clients,
            built.clients_per_round,
            built.rounds,
            built.seed,
            built.device,
            built.output_dir,
            built.data.label_ratio,
        )
        ratio = 1.0 if run.name == "a0.1_fedavg_100_s0" else 0.05
        assert got == ("resnet18", "inprocess", 10, 10, 100, 0, "cpu", f"/tmp/x/{run.name}", ratio)


def test_difference_says_above_below_or_within_noise(bench):
    # 10 points apart, standard error sqrt(2e-4/2 + 2e-4/2) = 1.4 points
    assert bench.difference([0.80, 0.82], [0.70, 0.72]) == "+10.0 ± 1.4, above"
    assert bench.difference([0.70, 0.72], [0.80, 0.82]) == "-10.0 ± 1.4, below"
    assert bench.difference([0.80, 0.90], [0.79, 0.91]) == "+0.0 ± 7.8, within noise"
    assert bench.difference([0.8], [0.7, 0.72]) == "+9.0 (one seed)"
    assert bench.difference([], [0.7]) == "-"
