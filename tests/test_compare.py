"""`fedlabel compare` on real tiny run folders (the table, the CSV, the plot, bad folders) and
the Hydra callback that writes the comparison at the end of `fedlabel simulate -m`."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedlabel
from fedlabel.compare import compare
from fedlabel.data import DataError, load_fashion_mnist
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

ENV = dict(
    os.environ, OMP_NUM_THREADS="1", FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1"
)
METRICS = [
    "final_accuracy",
    "mean_last_2",
    "best_val_accuracy",
    "best_val_round",
    "ece",
    "epsilon",
    "label_epsilon",
    "wall_seconds",
    "rounds_done",
    "status",
]


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedlabel.cli", *args],
        env=ENV,
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def table(markdown: str) -> list[list[str]]:
    """The markdown table's rows (header first), without the separator line."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|") and "---" not in ln]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


@pytest.fixture(scope="module")
def fashion_mnist() -> None:
    try:
        load_fashion_mnist(download=False)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")


@pytest.fixture(scope="module")
def runs(fashion_mnist, tmp_path_factory) -> Path:
    """Three real tiny runs that differ only in the seed: runs/seed0, seed1, seed2."""
    root = tmp_path_factory.mktemp("runs")
    for seed in range(3):
        fedlabel.run(tiny_config(root, seed=seed, name=f"seed{seed}"), progress=False)
    return root


def test_compare_three_runs(runs, tmp_path):
    folders = [runs / f"seed{s}" for s in range(3)]
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    done = cli("compare", *map(str, folders), "--last", "2", "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert rows[0] == ["run", "seed", *METRICS]  # the seed is the only setting that differs
    assert (tmp_path / "cmp" / "compare.md").read_text() == done.stdout
    for row, summary, seed in zip(rows[1:], summaries, range(3)):
        accuracies = [r["accuracy"] for r in summary["rounds"]]
        assert row[:3] == [f"seed{seed}", str(seed), f"{summary['final_accuracy']:.4f}"]
        assert row[3] == f"{sum(accuracies[-2:]) / 2:.4f}"
        assert row[4:8] == [  # best validation accuracy and round, final ECE; no privacy
            f"{summary['best_val_accuracy']:.4f}",
            str(summary["best_val_round"]),
            f"{summary['ece']:.4f}",
            "-",
        ]
        assert row[-2:] == [f"{len(summary['rounds'])}/2", "completed"]
    assert len(rows) == 4
    with open(tmp_path / "cmp" / "compare.csv", newline="") as fh:
        parsed = list(csv.DictReader(fh))
    assert [float(r["final_accuracy"]) for r in parsed] == [s["final_accuracy"] for s in summaries]
    assert [r["seed"] for r in parsed] == ["0", "1", "2"] and parsed[0]["epsilon"] == ""
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_out_is_the_common_parent(runs):
    compare([runs / "seed0", runs / "seed2"])
    assert len(table((runs / "compare.md").read_text())) == 3
    assert (runs / "compare.csv").is_file() and (runs / "compare.png").is_file()


def test_a_folder_that_is_not_a_run_is_one_line(runs, tmp_path):
    empty, corrupt = tmp_path / "empty", tmp_path / "corrupt"
    empty.mkdir()
    corrupt.mkdir()
    (corrupt / "summary.json").write_text('{"rounds": [')
    for bad, why in ((empty, "no summary.json"), (corrupt, "unreadable summary.json")):
        done = cli("compare", str(runs / "seed0"), str(bad), "--out", str(tmp_path / "cmp"))
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.splitlines()) == 1
        assert done.stderr.startswith(f"fedlabel compare: {bad}: ") and why in done.stderr
    assert not (tmp_path / "cmp").exists()


def write_run(folder: Path, **summary) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_validation_ece_epsilon_and_unfinished_runs(tmp_path):
    """Fields newer runs record are read, computed from the rounds when only they have them,
    and '-' in runs without them; an unfinished run is listed with its status."""
    rounds = [
        {"round": 1, "accuracy": 0.5, "val_accuracy": 0.6, "ece": 0.2, "epsilon": 1.5},
        {"round": 2, "accuracy": 0.7, "val_accuracy": 0.8, "ece": 0.1, "epsilon": 2.5},
        {"round": 3, "accuracy": 0.6, "val_accuracy": 0.8, "ece": None, "epsilon": 3.25},
    ]
    labeled = [{**r, "epsilon": None, "proportion_epsilon": 2.0} for r in rounds]  # label-DP
    config = {"rounds": 3, "seed": 0, "output_dir": "x", "algorithm": {"name": "fedlabel"}}
    write_run(
        tmp_path / "a",
        status="completed",
        final_accuracy=0.6,
        wall_seconds=12.0,
        rounds=rounds,
        config=config,
    )
    write_run(
        tmp_path / "b",
        status="completed",
        final_accuracy=0.6,
        wall_seconds=12.0,
        rounds=rounds,
        config={**config, "algorithm": {"name": "fedavg"}},
        best_val_accuracy=0.75,
        best_val_round=7,
        ece=0.05,
    )
    write_run(
        tmp_path / "c",
        status="running",
        final_accuracy=0.4,
        wall_seconds=3.0,
        rounds=[{"round": 1, "accuracy": 0.4}],
        config={**config, "rounds": 10},
    )
    write_run(
        tmp_path / "d",
        status="completed",
        final_accuracy=0.6,
        wall_seconds=12.0,
        rounds=labeled,
        config=config,
    )
    rows = table(compare([tmp_path / n for n in "abcd"], last=2))
    assert rows[0] == ["run", "algorithm", "rounds", *METRICS]
    a, b, c, d = rows[1:]
    # computed: the first round with the best validation accuracy, the last round's ECE
    assert a == ["a", "fedlabel", "3", "0.6000", "0.6500", "0.8000", "2", "0.1000", "3.25"] + [
        "-",
        "12.0",
        "3/3",
        "completed",
    ]
    assert b[4:8] == ["0.6500", "0.7500", "7", "0.0500"]  # as the summary records them
    assert c == ["c", "fedlabel", "10", "0.4000", "0.4000", "-", "-", "-", "-", "-", "3.0"] + [
        "1/10",
        "running",
    ]
    assert d[8:10] == ["-", "2"]  # label-DP: its own column, not DP-SGD's epsilon


def test_multirun_writes_the_comparison_into_the_sweep_folder(fashion_mnist, tmp_path):
    """`fedlabel simulate -m` of two tiny runs ends with compare.md/csv/png in the sweep folder
    (its columns: the swept key); a single run writes none."""
    smoke = ["experiment=smoke", "engine=inprocess", "device=cpu", "algorithm.local_steps=2"]
    sweep = tmp_path / "sweep"
    done = cli("simulate", "-m", *smoke, "rounds=1", "seed=3,4", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr
    rows = table((sweep / "compare.md").read_text())
    assert [r[:2] for r in rows] == [["run", "seed"], ["0", "3"], ["1", "4"]]
    for row, job in zip(rows[1:], ("0", "1")):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert row[2] == f"{summary['final_accuracy']:.4f}" and row[-1] == "completed"
    assert (sweep / "compare.csv").is_file() and (sweep / "compare.png").is_file()
    # the sweep folder again, one job (over job 0): job 1 of the sweep before is not this sweep's
    again = ["rounds=1", "seed=5", "overwrite=true", f"hydra.sweep.dir={sweep}"]
    done = cli("simulate", "-m", *smoke, *again)
    assert done.returncode == 0, done.stderr
    assert [r[0] for r in table((sweep / "compare.md").read_text())] == ["run", "0"]
    single = tmp_path / "single" / "run"
    done = cli("simulate", *smoke, "rounds=1", f"output_dir={single}")
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "single").rglob("compare.*"))
