"""The privacy sweep: its plan of runs, its report section, and that it keeps the rest of the
file."""

from fedlabel import privacy_sweep as sweep


def test_plan_has_baseline_and_plain_overrides():
    args = sweep.parse_args(
        ["--noise", "0.5,2", "--bag-sizes", "1,8", "--proportion-epsilons", "1", "rounds=3"]
    )
    runs = sweep.plan(args)
    assert [r["series"] for r in runs] == [
        "baseline",
        "noise",
        "noise",
        "bag_size",
        "bag_size",
        "proportion",
    ]
    assert runs[2]["overrides"] == ["privacy=dpsgd", "privacy.noise_multiplier=2.0"]
    assert runs[4]["overrides"] == ["privacy=none", "data.bag_size=8"]
    assert runs[5]["overrides"] == [
        "privacy=none",
        "data.bag_size=8",
        "data.proportion_epsilon=1.0",
    ]
    assert args.overrides == ["rounds=3"]


def _result(series, x, acc, eps=None):
    return {
        "series": series,
        "x": x,
        "final_accuracy": acc,
        "mean_accuracy": acc,
        "epsilon": eps,
        "delta": 1e-5,
        "round_seconds": 10.0,
        "cpu_seconds": 8.0 if series == "baseline" else 16.0,
        "wall_seconds": 12.0,
        "command": f"fedlabel simulate {series}",
    }


def test_report_section_replaced_in_place(tmp_path):
    args = sweep.parse_args(["--noise", "1,2", "rounds=3"])
    results = [
        _result("baseline", None, 0.8),
        _result("noise", 1.0, 0.6, 3.5),
        _result("noise", 2.0, 0.7, 1.2),
    ]
    text = sweep.render(results, args, images=tmp_path, report_dir=tmp_path, total=60.0)
    assert "| 1 | 3.50 | 0.6000 | 0.6000 | 10.0 | 16.0 | 2.00x | 12.0 |" in text
    assert (tmp_path / "privacy-dp-noise.png").stat().st_size > 0
    report = tmp_path / "privacy.md"
    report.write_text("# Privacy\n\n## LLP\nkept\n")
    sweep.write_section(report, "DP", text)
    sweep.write_section(report, "DP", text.replace("3.50", "3.75"))
    content = report.read_text()
    assert (
        content.count("\n## DP\n") == 1
        and "3.75" in content
        and "3.50" not in content
        and "## LLP\nkept" in content
    )
