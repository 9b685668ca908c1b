"""`fedlabel privacy-sweep`: the privacy-utility report.

Runs one non-private baseline and one run per point of each requested series, all on the
in-process engine with the same base overrides (Hydra syntax, exactly as `fedlabel simulate`
takes them), then writes a results.json, PNG curves and a marked section of a markdown file:

  noise        privacy=dpsgd privacy.noise_multiplier=z        (accuracy against epsilon)
  central      privacy=central_dp privacy.noise_multiplier=z   (accuracy against epsilon)
  bag_size     data.bag_size=k                                 (accuracy against bag size)
  proportion   data.bag_size=<--proportion-bag-size> data.proportion_epsilon=e

Series points are plain overrides, so keys another part of the project adds (data.bag_size,
data.proportion_epsilon) work as soon as the schema has them; until then Hydra stops with an
error naming the key. Only the section between this section's markers is rewritten, so other
sections of the same file (written by hand or by another `--section`) are kept.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="fedlabel privacy-sweep", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--noise", type=_floats, default=[], help="DP-SGD noise multipliers, e.g. 0.5,1,2,4"
    )
    ap.add_argument(
        "--central-noise", type=_floats, default=[], help="central-DP noise multipliers"
    )
    ap.add_argument(
        "--bag-sizes",
        type=lambda s: [int(v) for v in _floats(s)],
        default=[],
        help="e.g. 1,8,32,128",
    )
    ap.add_argument(
        "--proportion-epsilons",
        type=_floats,
        default=[],
        help="label-DP epsilons on bag proportions",
    )
    ap.add_argument(
        "--proportion-bag-size",
        type=int,
        default=8,
        help="bag size of the proportion-epsilon series",
    )
    ap.add_argument(
        "--last",
        type=int,
        default=5,
        help="accuracy = mean of the last N evaluations (and the final one)",
    )
    ap.add_argument(
        "--workdir", default="", help="run outputs (default outputs/privacy-sweep/<time>)"
    )
    ap.add_argument(
        "--report", default="docs/privacy.md", help="markdown file to write the section into"
    )
    ap.add_argument(
        "--section", default="DP", help="the section heading (and marker) this sweep owns"
    )
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the report from --workdir's results.json, run nothing",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        help="base Hydra overrides for every run, e.g. rounds=10 data.train_samples=6000",
    )
    args = ap.parse_args(argv)
    if not (args.noise or args.central_noise or args.bag_sizes or args.proportion_epsilons):
        ap.error(
            "nothing to sweep: give --noise, --central-noise, --bag-sizes or --proportion-epsilons"
        )
    return args


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of the sweep: series name, x value, overrides on top of the base ones."""
    runs = [{"series": "baseline", "x": None, "overrides": ["privacy=none"]}]
    runs += [
        {"series": "noise", "x": z, "overrides": ["privacy=dpsgd", f"privacy.noise_multiplier={z}"]}
        for z in args.noise
    ]
    runs += [
        {
            "series": "central",
            "x": z,
            "overrides": ["privacy=central_dp", f"privacy.noise_multiplier={z}"],
        }
        for z in args.central_noise
    ]
    runs += [
        {"series": "bag_size", "x": k, "overrides": ["privacy=none", f"data.bag_size={k}"]}
        for k in args.bag_sizes
    ]
    runs += [
        {
            "series": "proportion",
            "x": e,
            "overrides": [
                "privacy=none",
                f"data.bag_size={args.proportion_bag_size}",
                f"data.proportion_epsilon={e}",
            ],
        }
        for e in args.proportion_epsilons
    ]
    return runs


def run_one(run: dict[str, Any], base: list[str], workdir: Path, *, last: int) -> dict[str, Any]:
    from fedlabel.api import run as run_simulation

    label = run["series"] if run["x"] is None else f"{run['series']}-{run['x']}"
    overrides = [*base, *run["overrides"], "engine=inprocess", f"output_dir={workdir / label}"]
    start, cpu = time.perf_counter(), time.process_time()
    summary = run_simulation(overrides, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    evaluated = [r["accuracy"] for r in summary["rounds"] if r["accuracy"] is not None]
    privacy = summary.get("privacy") or {}
    return {
        **run,
        "label": label,
        "final_accuracy": summary["final_accuracy"],
        "mean_accuracy": sum(evaluated[-last:]) / len(evaluated[-last:]),
        "epsilon": summary["rounds"][-1].get("epsilon"),
        "delta": privacy.get("delta"),
        "round_seconds": sum(r["seconds"] for r in summary["rounds"]),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "command": (
            "fedlabel simulate " + shlex.join([*base, *run["overrides"], "engine=inprocess"])
        ),
    }


# --------------------------------------------------------------------------------------------
# report


def _plot(results: list[dict], series: str, xlabel: str, path: Path, *, logx: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(r for r in results if r["series"] == "baseline")
    pts = sorted(
        (r["epsilon"] if series in ("noise", "central") else r["x"], r["mean_accuracy"])
        for r in results
        if r["series"] == series
    )
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    labels = {
        "noise": "DP-SGD",
        "central": "central DP",
        "bag_size": "bags",
        "proportion": "noisy proportions",
    }
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=labels[series])
    ax.axhline(base["mean_accuracy"], color="grey", linestyle="--", label="no privacy")
    if logx:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (mean of last evaluations)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(results: list[dict], series: str, xname: str, base: dict) -> list[str]:
    dp = series in ("noise", "central")
    head = (
        f"| {xname} | "
        + ("epsilon | " if dp else "")
        + "final acc | mean acc | round time (s) | CPU time (s) | CPU slowdown | wall (s) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in [base] + [r for r in results if r["series"] == series]:
        x = "none" if r["series"] == "baseline" else f"{r['x']:g}"
        eps = "" if not dp else ("inf | " if r["epsilon"] is None else f"{r['epsilon']:.2f} | ")
        lines.append(
            f"| {x} | {eps}{r['final_accuracy']:.4f} | {r['mean_accuracy']:.4f} |"
            f" {r['round_seconds']:.1f} | {r['cpu_seconds']:.1f} |"
            f" {r['cpu_seconds'] / base['cpu_seconds']:.2f}x | {r['wall_seconds']:.1f} |"
        )
    return lines


def render(
    results: list[dict], args: argparse.Namespace, *, images: Path, report_dir: Path, total: float
) -> str:
    base = next(r for r in results if r["series"] == "baseline")
    delta = next((r["delta"] for r in results if r["delta"] is not None), None)
    out = [
        f"## {args.section}",
        "",
        (
            f"Measured {datetime.now():%Y-%m-%d} with `fedlabel privacy-sweep"
            f" {shlex.join(_argv(args))}` ({len(results)} runs, {total / 60:.1f} min wall in all,"
            " on the in-process engine). Base overrides of every run:"
            f" `{' '.join(args.overrides) or '(defaults)'}`; accuracy = the final evaluation and"
            f" the mean of the last {args.last} evaluations;"
            f" {f'epsilon at delta = {delta}; ' if delta is not None else ''}round time = the sum"
            " of the rounds' wall seconds (training, aggregation, evaluation; no start-up); CPU"
            " time = this process's CPU seconds for the whole run (robust to other jobs on the"
            " machine), CPU slowdown = against the non-private run."
        ),
        "",
    ]
    specs = [
        ("noise", "DP-SGD noise multiplier z", "epsilon", True),
        ("central", "central-DP noise multiplier z", "epsilon", True),
        ("bag_size", "bag size", "bag size", True),
        ("proportion", "proportion epsilon", "proportion epsilon", True),
    ]
    for series, xname, xlabel, logx in specs:
        if not any(r["series"] == series for r in results):
            continue
        slug = "".join(c if c.isalnum() else "-" for c in args.section.lower()).strip("-")
        png = images / f"privacy-{slug}-{series}.png"
        _plot(results, series, xlabel, png, logx=logx)
        shown = png.relative_to(report_dir) if png.is_relative_to(report_dir) else png
        out += [
            f"### {xname}",
            "",
            *_table(results, series, xname, base),
            "",
            f"![accuracy against {xlabel}]({shown})",
            "",
        ]
    out += [
        "Each run alone (same seed):",
        "",
        "```bash",
        *sorted({r["command"] for r in results}),
        "```",
        "",
    ]
    return "\n".join(out)


def _argv(args: argparse.Namespace) -> list[str]:
    argv = []
    for flag, values in (
        ("--noise", args.noise),
        ("--central-noise", args.central_noise),
        ("--bag-sizes", args.bag_sizes),
        ("--proportion-epsilons", args.proportion_epsilons),
    ):
        if values:
            argv += [flag, ",".join(f"{v:g}" for v in values)]
    if args.section != "DP":
        argv += ["--section", args.section]
    return argv + list(args.overrides)


def write_section(report: Path, section: str, text: str) -> None:
    """Replace this section's marked block in ``report`` (append it if absent); keep the rest."""
    begin, end = f"<!-- privacy-sweep:{section} begin -->", f"<!-- privacy-sweep:{section} end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = report.read_text() if report.exists() else "# Privacy and utility\n\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(new)


def main(argv: list[str]) -> int:
    from fedlabel.api import compose
    from fedlabel.config import config_from_dict
    from fedlabel.data import DataError
    from fedlabel.errors import ConfigError

    args = parse_args(argv)
    try:
        for run in plan(args):  # every run's config must compose and validate before any work
            config_from_dict(compose([*args.overrides, *run["overrides"], "output_dir=x"]))
    except ConfigError as err:
        print(f"fedlabel privacy-sweep: config error: {err}", file=sys.stderr)
        return 2
    try:
        return _sweep(args)
    except DataError as err:
        print(f"fedlabel privacy-sweep: data error: {err}", file=sys.stderr)
        return 2


def _sweep(args: argparse.Namespace) -> int:
    workdir = Path(
        args.workdir or f"outputs/privacy-sweep/{datetime.now():%Y-%m-%d_%H-%M-%S}"
    ).resolve()
    if args.render_only:
        results = json.loads((workdir / "results.json").read_text())
        total = sum(r["wall_seconds"] for r in results)
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        start, results = time.perf_counter(), []
        for run in plan(args):
            print(
                f"privacy-sweep: {run['series']} {'' if run['x'] is None else run['x']}",
                file=sys.stderr,
                flush=True,
            )
            results.append(run_one(run, list(args.overrides), workdir, last=args.last))
            (workdir / "results.json").write_text(json.dumps(results, indent=2))
        total = time.perf_counter() - start
    report = Path(args.report).resolve()
    text = render(results, args, images=report.parent, report_dir=report.parent, total=total)
    write_section(report, args.section, text)
    print(text)
    return 0
