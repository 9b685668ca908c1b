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

pytestmark = pytest.mark.slow

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
    "data.test_samples=500",
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
    # the calibration table: the test ECE of the last round (--last 1), mean ± std over seeds
    eces = [_rounds(tmp_path, f"a0.1_fedavg_5_s{s}")[-1]["ece"] for s in (0, 1)]
    ece_rows = report.split("## Calibration")[1].splitlines()
    mean, std = statistics.fmean(eces), statistics.stdev(eces)
    assert f"| FedAvg, labeled part only | {mean:.4f} ± {std:.4f} |" in ece_rows
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


def _grid_args(**given) -> argparse.Namespace:
    """What build_grid reads of the command line: no sweeps, the sweep cell Dir(0.1), 5%."""
    base = dict(no_reference=False, no_sweeps=True, no_paper_cell=False, sweep=[])
    return argparse.Namespace(**base, sweep_setting=[0.1, 0.05], sweep_rounds=0, **given)


def test_cross_silo_grid_runs_the_cross_silo_experiment(bench):
    args = _grid_args(experiment="cross_silo", seeds=[0], rounds=100, extra=["device=cpu"])
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


def test_paper_cell_runs_fixmatch_at_mu_7_beside_the_grid(bench):
    args = _grid_args(experiment="fmnist_cross_device", seeds=[0, 1], rounds=5, extra=[])
    args.no_reference = True
    lrs = {"fedavg_fixmatch": 0.05}
    grid, _, _ = bench.build_grid(args, ["fedavg_fixmatch"], [(1.0, 0.01)], lrs)
    paper = {k: r for k, r in grid.items() if "@" in k[2]}
    assert sorted(r.name for r in paper.values()) == [
        "a0.1_fedavg_fixmatch_5_unlabeled_ratio7_s0",
        "a0.1_fedavg_fixmatch_5_unlabeled_ratio7_s1",
    ]
    for run in paper.values():
        built = config_from_dict(fedlabel.compose(run.command(Path("/tmp/x"))[2:]))
        assert (built.algorithm.unlabeled_ratio, built.algorithm.lr) == (7, 0.05)
        assert (built.data.alpha, built.data.label_ratio) == (0.1, 0.05)
    args.no_paper_cell = True
    grid, _, _ = bench.build_grid(args, ["fedavg_fixmatch"], [(1.0, 0.01)], lrs)
    assert not [k for k in grid if "@" in k[2]]


def test_lrs_tuned_on_another_experiment_apply_only_when_asked_for(tmp_path):
    flags = ["--experiment", "cross_silo", *GRID, "--seeds", "0", "--no-sweeps", "--report-only"]
    proc = _bench(tmp_path, *flags)  # the committed tuned.json is for fmnist_cross_device
    assert proc.returncode == 0, proc.stderr
    assert "tuned on another experiment; cross_silo runs untuned" in proc.stdout
    mine = tmp_path / "tuned.json"
    shutil.copy(ROOT / "benchmarks" / "tuned.json", mine)
    proc = _bench(tmp_path, *flags, "--tuned", str(mine))
    assert proc.returncode != 0
    assert "tuned on fmnist_cross_device, not cross_silo" in proc.stderr


def test_difference_says_above_below_or_within_noise(bench):
    # 10 points apart, standard error sqrt(2e-4/2 + 2e-4/2) = 1.4 points
    assert bench.difference([0.80, 0.82], [0.70, 0.72]) == "+10.0 ± 1.4, above"
    assert bench.difference([0.70, 0.72], [0.80, 0.82]) == "-10.0 ± 1.4, below"
    assert bench.difference([0.80, 0.90], [0.79, 0.91]) == "+0.0 ± 7.8, within noise"
    assert bench.difference([0.8], [0.7, 0.72]) == "+9.0 (one seed)"
    assert bench.difference([], [0.7]) == "-"


TUNE = ["--tune-lrs", "0.01", "0.2", "--tune-rounds", "2", "--seeds", "0", "--no-sweeps"]


def _summary(tmp_path, name):
    return json.loads((tmp_path / "runs" / name / "summary.json").read_text())


def _edit_last_round(tmp_path, name, **values):
    path = tmp_path / "runs" / name / "summary.json"
    s = json.loads(path.read_text())
    s["rounds"][-1] |= values
    path.write_text(json.dumps(s))


def test_tuning_chooses_by_validation_and_the_grid_runs_with_the_choice(tmp_path):
    tuned = tmp_path / "tuned.json"
    proc = _bench(tmp_path, "--tune", *TUNE, "--tuned", str(tuned), *GRID)
    assert proc.returncode == 0, proc.stderr
    names = {
        (m, lr): f"a0.1_fedavg_{ratio}_lr{lr}_s100"
        for m, ratio in (("reference", 100), ("fedavg", 5))
        for lr in ("0.01", "0.2")
    }
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(names.values())
    for m in ("reference", "fedavg"):  # as run: the argmax of the last round's validation accuracy
        val = {
            lr: _summary(tmp_path, names[(m, lr)])["rounds"][-1]["val_accuracy"]
            for lr in ("0.01", "0.2")
        }
        best = max(sorted(val, key=float), key=val.__getitem__)
        assert json.loads(tuned.read_text())["chosen"][m] == {
            "lr": float(best),
            "val_accuracy": val[best],
        }

    # validation and test disagree: lr 0.01 is best on validation, 0.2 on test; the reference's
    # validation accuracies tie (the smaller lr wins) while 0.2 is better on test
    _edit_last_round(tmp_path, names[("fedavg", "0.01")], val_accuracy=0.9, accuracy=0.1)
    _edit_last_round(tmp_path, names[("fedavg", "0.2")], val_accuracy=0.2, accuracy=0.8)
    _edit_last_round(tmp_path, names[("reference", "0.01")], val_accuracy=0.5, accuracy=0.3)
    _edit_last_round(tmp_path, names[("reference", "0.2")], val_accuracy=0.5, accuracy=0.7)
    proc = _bench(tmp_path, "--tune", *TUNE, "--tuned", str(tuned), "--report-only", *GRID)
    assert proc.returncode == 0, proc.stderr
    written = json.loads(tuned.read_text())
    assert written["chosen"] == {
        "reference": {"lr": 0.01, "val_accuracy": 0.5},
        "fedavg": {"lr": 0.01, "val_accuracy": 0.9},
    }
    assert written["protocol"] | {"extra": []} == {
        "experiment": "fmnist_cross_device",
        "methods": ["reference", "fedavg"],
        "key": "algorithm.lr",
        "lrs": [0.01, 0.2],
        "alpha": 0.1,
        "label_ratio": 0.05,
        "seed": 100,
        "rounds": 2,
        "last": 1,
        "eval_every": 1,
        "extra": [],
    }
    assert "--tune --tune-lrs 0.01 0.2" in written["command"]
    report = (tmp_path / "docs" / "results.md").read_text()
    assert "| FedAvg, labeled part only | **0.9000 / 0.1000** | 0.2000 / 0.8000 |" in report
    assert "| FedAvg, 100% labels | **0.5000 / 0.3000** | 0.5000 / 0.7000 |" in report
    assert written["command"] in report

    # the grid runs with the chosen lr; a method without one runs its default, marked untuned
    grid = [*GRID, "--methods", "fedavg", "fedprox"]
    proc = _bench(tmp_path, "--rounds", "2", *TUNE, "--tuned", str(tuned), *grid)
    assert proc.returncode == 0, proc.stderr
    assert "3 of 3 runs to do" in proc.stdout  # the tuning runs are not grid runs
    lr = {
        n: _summary(tmp_path, n)["config"]["algorithm"]["lr"]
        for n in ("a0.1_fedavg_100_s0", "a0.1_fedavg_5_s0", "a0.1_fedprox_5_s0")
    }
    assert lr == {"a0.1_fedavg_100_s0": 0.01, "a0.1_fedavg_5_s0": 0.01, "a0.1_fedprox_5_s0": 0.05}
    report = (tmp_path / "docs" / "results.md").read_text()
    assert "| FedProx, labeled part only (untuned) |" in report
    assert "| FedProx, labeled part only | untuned (0.05) | - |" in report
    assert "| FedAvg, labeled part only | 0.01 | 0.9000 |" in report

    # another tuned lr: the finished grid run with the old one is an error naming it, not reused
    tuned.write_text(
        json.dumps(
            written | {"chosen": written["chosen"] | {"fedavg": {"lr": 0.2, "val_accuracy": 0.9}}}
        )
    )
    proc = _bench(tmp_path, "--rounds", "2", *TUNE, "--tuned", str(tuned), *grid)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"{tmp_path / 'runs' / 'a0.1_fedavg_5_s0'}: a completed run with other settings than this"
        " study's: algorithm.lr (run 0.01, now 0.2); move it away or use another --out and"
        " --archive"
    ]


def test_a_run_from_before_the_validation_split_is_not_taken_as_done(tmp_path):
    proc = _bench(
        tmp_path,
        "--rounds",
        "2",
        "--no-reference",
        *TUNE,
        "--tuned",
        str(tmp_path / "none.json"),
        *GRID,
    )
    assert proc.returncode == 0, proc.stderr
    # archived as runs were before data.val_fraction existed (no key: no validation set)
    s = _summary(tmp_path, "a0.1_fedavg_5_s0")
    del s["config"]["data"]["val_fraction"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "a0.1_fedavg_5_s0.json.gz").write_bytes(gzip.compress(json.dumps(s).encode()))
    shutil.rmtree(tmp_path / "runs")
    args = ["--rounds", "2", "--no-reference", *TUNE, "--tuned", str(tmp_path / "none.json"), *GRID]
    proc = _bench(tmp_path, *args, "--archive", str(old))
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        f"{old}/a0.1_fedavg_5_s0.json.gz: a completed run with other settings than this"
        " study's: data.val_fraction (run 0.0, now 0.05); move it away or use another --out"
        " and --archive"
    )
    # as the untuned grid beside a new one, it is reported as it is
    proc = _bench(tmp_path, *args, "--report-only", "--untuned-archive", str(old))
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "docs" / "results.md").read_text()
    mean = s["rounds"][-1]["accuracy"]
    untuned = report[report.index("## Before tuning (2 rounds") :]
    assert f"| FedAvg, labeled part only | {mean:.4f} |" in untuned
    assert "| FedAvg, labeled part only | - |" in report[: report.index("## Before tuning")]


def test_the_tuning_seed_is_not_a_reported_seed(tmp_path):
    proc = _bench(
        tmp_path, "--tune", *TUNE, "--tune-seed", "0", "--tuned", str(tmp_path / "t.json"), *GRID
    )
    assert proc.returncode != 0
    assert "--tune-seed 0 is among --seeds; the reported seeds must not include it" in proc.stderr
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "runs").exists()
    # nor may the grid report the seed a tuned file was chosen on
    (tmp_path / "t.json").write_text(
        json.dumps({"protocol": {"experiment": "fmnist_cross_device", "seed": 0}, "chosen": {}})
    )
    proc = _bench(tmp_path, "--rounds", "2", *TUNE, "--tuned", str(tmp_path / "t.json"), *GRID)
    assert proc.returncode != 0
    assert f"--seeds: 0 is the tuning seed of {tmp_path / 't.json'}" in proc.stderr
