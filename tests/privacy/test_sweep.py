"""The privacy sweep: its studies' plans, the noise calibration against Opacus's accountant, and
a real tiny study that resumes, extends, archives and refuses mixed settings."""

import json
from pathlib import Path

import pytest

from fedlabel import privacy_sweep as sweep
from fedlabel.privacy.accountant import epsilon

pytestmark = pytest.mark.slow


def _no_calibration(target, history, delta):
    return round(10.0 / target, 3)


def test_studies_plan_a_baseline_per_arm_and_every_series_point():
    silo = sweep.plan(sweep.STUDIES["cross-silo"], [], _no_calibration)
    names = [p.run.name for p in silo]
    assert names[:5] == [
        "fedavg-5_none",
        "fedavg-5_epsilon1",
        "fedavg-5_epsilon3",
        "fedavg-5_epsilon8",
        "fedavg-5_epsilon16",
    ]
    assert "fedavg-20-tanh_epsilon3" in names and "fedavg-20-tanh_epsilon1" not in names
    clip = next(p.run for p in silo if p.run.name == "fedavg-20-clip_noise0.1").settings()
    assert clip["privacy.noise_multiplier"] == "0.1" and "fedavg-20-clip_none" not in names
    lr = {p.run.name: p.run.settings() for p in silo if p.run.name.startswith("fedavg-20-lr")}
    assert sorted(lr) == [
        f"fedavg-20-lr0.2_{x}" for x in ("epsilon3", "epsilon8", "noise0.1", "none")
    ]
    assert {s["algorithm.lr"] for s in lr.values()} == {"0.2"}
    run = next(p.run for p in silo if p.run.name == "fedlabel-20_epsilon3").settings()
    assert run["privacy"] == "dpsgd" and run["algorithm"] == "fedlabel"
    assert run["privacy.noise_multiplier"] == f"{10 / 3:.3f}".rstrip("0")
    device = sweep.plan(sweep.STUDIES["cross-device"], ["rounds=7"], _no_calibration)
    assert [p.run.name for p in device if p.kind is None] == ["server_none"]  # one shared baseline
    assert all(p.run.settings()["rounds"] == "7" for p in device)  # extra overrides come last
    llp = {p.run.name: p.run.settings() for p in sweep.plan(sweep.STUDIES["llp"], [], None)}
    assert llp["bp_bag_size32"]["data.llp_method"] == "bp"
    assert llp["dllp_proportion2"]["data.proportion_epsilon"] == "2"
    assert llp["dllp-iid_bag_size128"]["data.partition"] == "iid" and "dllp-iid_none" in llp
    assert "data.partition" not in llp["dllp_bag_size128"]  # the default setup's Dirichlet split


@pytest.mark.parametrize("history", [[(0.1, 1000)], [(0.028, 1000), (0.007, 1000)]])
def test_calibrated_noise_reaches_the_target_epsilon_and_no_less_noise_does(history):
    z = sweep.calibrate(3.0, history, delta=1e-5)
    spent = epsilon([(z, q, s) for q, s in history], delta=1e-5)
    tighter = epsilon([(z * 0.99, q, s) for q, s in history], delta=1e-5)
    assert spent <= 3.0 < tighter


def test_the_calibration_composes_what_the_server_accounts():
    cfg = {
        "data": {"train_samples": 0, "val_fraction": 0.05, "num_clients": 10, "label_ratio": 0.2},
        "algorithm": {"batch_size": 32, "local_steps": 10, "unlabeled_steps": 5},
        "rounds": 100,
        "clients_per_round": 10,
    }
    assert sweep._noise_history(cfg, "epsilon") == [(32 / 1140, 1000), (32 / 4560, 500)]
    assert sweep._noise_history(cfg, "central") == [(1.0, 100)]


def test_report_section_replaced_in_place(tmp_path):
    report = tmp_path / "privacy.md"
    report.write_text("# Privacy\n\n## LLP\nkept\n")
    sweep.write_section(report, "DP", "## DP\n\nold 3.50\n")
    sweep.write_section(report, "DP", "## DP\n\nnew 3.75\n")
    content = report.read_text()
    assert content.count("\n## DP\n") == 1 and "3.75" in content and "3.50" not in content
    assert "## LLP\nkept" in content


def _sweep(tmp_path: Path, *more: str) -> int:
    return sweep.main(
        [
            "--noise",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--archive",
            str(tmp_path / "archive"),
            "--report",
            str(tmp_path / "privacy.md"),
            "--last",
            "1",
            *more,
            "experiment=smoke",
            "eval_every=1",
        ]
    )


def test_a_tiny_study_resumes_extends_archives_and_refuses_other_settings(tmp_path, capsys):
    assert _sweep(tmp_path, "rounds=1") == 0
    text = (tmp_path / "privacy.md").read_text()
    assert "2 of 2 runs finished" in text and "| runs | 2 |" in text and "| runs | - | - |" in text
    assert (tmp_path / "privacy-dp-noise.png").stat().st_size > 0
    first = json.loads((tmp_path / "out/run_noise2/summary.json").read_text())
    assert first["rounds"][0]["epsilon"] > 0 and first["cpu_seconds"] > 0

    assert _sweep(tmp_path, "rounds=1") == 0  # finished: nothing runs again
    assert "0 of 2 runs to do" in capsys.readouterr().out

    assert _sweep(tmp_path, "rounds=2") == 0  # more rounds: each run continues from round 1
    longer = json.loads((tmp_path / "out/run_noise2/summary.json").read_text())
    assert len(longer["rounds"]) == 2 and longer["rounds"][0] == first["rounds"][0]
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == [
        "run_noise2.json.gz",
        "run_none.json.gz",
    ]

    for run in (tmp_path / "out").iterdir():  # a fresh clone: the archive alone
        (run / "summary.json").unlink()
    (tmp_path / "privacy.md").unlink()
    assert _sweep(tmp_path, "--render-only", "rounds=2") == 0
    assert "2 of 2 runs finished" in (tmp_path / "privacy.md").read_text()

    with pytest.raises(SystemExit, match="run_none.json.gz: a completed run with other settings"):
        _sweep(tmp_path, "--render-only", "rounds=2", "algorithm.lr=0.5")


def test_the_report_shows_the_command_that_runs_the_study():
    argv = [
        "--study",
        "llp",
        "--render-only",
        "--report",
        "x.md",
        "--jobs=2",
        "--runs",
        "bp*",
        "rounds=3",
    ]
    assert sweep.study_argv(argv) == ["--study", "llp", "rounds=3"]


def test_runs_patterns_run_only_the_matching_runs(tmp_path, capsys):
    assert _sweep(tmp_path, "--runs", "run_noise*", "rounds=1") == 0
    assert "1 of 1 runs to do" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == ["run_noise2.json.gz"]
    assert "1 of 2 runs finished" in (tmp_path / "privacy.md").read_text()
    assert _sweep(tmp_path, "--runs", "fedavg-*", "rounds=1") == 2
    assert "--runs matches none of: run_noise2 run_none" in capsys.readouterr().err
    assert not (tmp_path / "out/run_none").exists()
