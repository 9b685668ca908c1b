"""`fedlabel privacy-sweep`: the privacy-utility studies, resumable, and their report.

A study is a set of `fedlabel simulate` runs on the in-process engine: for each arm (a method, a
label ratio, a clipping mode, ...) a non-private run and one run per point of each series:

  epsilon      privacy=dpsgd, z calibrated to reach this record-level epsilon at the end
  central      privacy=central_dp, z calibrated to this client-level epsilon
  noise        privacy=dpsgd privacy.noise_multiplier=z      (z given)
  central_z    privacy=central_dp privacy.noise_multiplier=z (z given)
  bag_size     data.bag_size=k                               (label proportions)
  proportion   data.bag_size=<bag> data.proportion_epsilon=e (label-DP noisy proportions)

Calibration composes exactly what the server will account (fedlabel.privacy.accountant): per
round the labeled branch's local_steps at rate batch_size / labeled records, for FedLabel also
unlabeled_steps at batch_size / unlabeled records, for central DP one step at rate
clients_per_round / num_clients; clients of equal nominal size (the IID split). The table shows
the epsilon each run measured. Noise multipliers are cached in <archive>/calibration.json.

--study cross-silo | cross-device | llp runs the studies of docs/privacy.md; --noise,
--central-noise, --bag-sizes and --proportion-epsilons make a study of their own (section
--section). Runs live in --out (checkpoints; a run stopped half-way continues) and, for the
named studies, every finished one is archived in --archive (benchmarks/runs/privacy-<study>,
committed): runs already finished are not run again, `--render-only` rewrites the report from
them; `--runs PATTERN` (repeatable) runs only the runs whose names match a shell-style pattern
(e.g. 'fedavg-20-*'; the report still shows every finished run). Only the section between the
study's markers in --report is rewritten. Extra overrides after the options are added to every
run of the study (changing what has finished is an error naming the run: use another --out and
--archive).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fedlabel.runset import Run, Store, intended, run_all

# --------------------------------------------------------------------------------------------
# studies


@dataclass(frozen=True)
class Arm:
    label: str  # as the tables and legends show it
    slug: str  # run-name prefix
    overrides: tuple[str, ...] = ()
    series: dict[str, tuple[float, ...]] | None = None  # None: the study's
    baseline: bool = True  # a non-private run of this arm
    shares: str = ""  # without one: the label of the arm whose non-private run it is compared to


@dataclass(frozen=True)
class Study:
    key: str
    title: str  # the report section's heading (and marker)
    about: str  # what it measures, shown above its tables
    base: tuple[str, ...]
    arms: tuple[Arm, ...]
    series: dict[str, tuple[float, ...]]
    anchors: tuple[tuple[str, float, float], ...] = ()  # (label, x, accuracy) marked on plots
    bag_size: int = 8  # the proportion series' bags
    last: int = 5  # accuracy = mean of the last N evaluations


EVALUATION = ("engine=inprocess", "eval_every=5", "eval_last=5")
DP_TARGETS = (1.0, 3.0, 8.0, 16.0)
SILO = ("algorithm=fedavg", "data.label_ratio=0.2")
STUDIES = {
    s.key: s
    for s in (
        Study(
            "cross-silo",
            "Cross-silo: record-level DP-SGD",
            "10 silos hold all of Fashion-MNIST's training set (IID, about 5,700 records each"
            " after the 5% validation split), all in every round, 200 rounds, the default CNN;"
            " DP-SGD in every training loop of every silo (record-level DP; FedLabel's"
            " unlabeled branch too).",
            (
                "data.num_clients=10",
                "clients_per_round=10",
                "data.partition=iid",
                "rounds=200",
                *EVALUATION,
            ),
            (
                Arm("FedAvg, 5% labels", "fedavg-5", ("algorithm=fedavg", "data.label_ratio=0.05")),
                Arm("FedAvg, 20% labels", "fedavg-20", SILO),
                Arm(
                    "FedLabel, 5% labels",
                    "fedlabel-5",
                    ("algorithm=fedlabel", "data.label_ratio=0.05"),
                ),
                Arm(
                    "FedLabel, 20% labels",
                    "fedlabel-20",
                    ("algorithm=fedlabel", "data.label_ratio=0.2"),
                ),
                # utility levers, each against FedAvg at 20% labels, at epsilon 3
                Arm(
                    "FedAvg 20%, batch 128",
                    "fedavg-20-b128",
                    (*SILO, "algorithm.batch_size=128"),
                    {"epsilon": (3.0,)},
                ),
                Arm(
                    "FedAvg 20%, tanh",
                    "fedavg-20-tanh",
                    (*SILO, "model.activation=tanh"),
                    {"epsilon": (3.0,)},
                ),
                Arm(
                    "FedAvg 20%, 20 local steps",
                    "fedavg-20-s20",
                    (*SILO, "algorithm.local_steps=20"),
                    {"epsilon": (3.0,)},
                ),
                # clipping with almost no noise: how much of DP-SGD's loss is the clipping itself
                Arm(
                    "FedAvg 20%, clipping, z = 0.1",
                    "fedavg-20-clip",
                    SILO,
                    {"noise": (0.1,)},
                    baseline=False,
                    shares="FedAvg, 20% labels",
                ),
                # a larger lr against clipping's shorter steps (clipping alone capped lr 0.05 at
                # the epsilon-8 accuracy): non-private, epsilon 3 and 8, clipping with z = 0.1
                Arm(
                    "FedAvg 20%, lr 0.2",
                    "fedavg-20-lr0.2",
                    (*SILO, "algorithm.lr=0.2"),
                    {"epsilon": (3.0, 8.0), "noise": (0.1,)},
                ),
            ),
            {"epsilon": DP_TARGETS},
            anchors=(
                ("DP-SGD CNN, centralised (Tramer & Boneh 2021)", 3.0, 0.860),
                ("ScatterNet + linear, centralised (Tramer & Boneh 2021)", 3.0, 0.897),
            ),
        ),
        Study(
            "cross-device",
            "Cross-device: client-level central DP",
            "1,000 clients (Fashion-MNIST, Dirichlet 1.0, every record labeled), 100 sampled per"
            " round, FedAvg, 200 rounds, the default CNN; DP-FedAvg: every update clipped to"
            " C = 1, equal-weight mean, Gaussian noise z C / 100 (client-level DP).",
            (
                "algorithm=fedavg",
                "data.num_clients=1000",
                "clients_per_round=100",
                "data.alpha=1.0",
                "data.label_ratio=1.0",
                "rounds=200",
                *EVALUATION[:1],
                "eval_every=10",
                "eval_last=5",
            ),
            (
                Arm("server-side clipping", "server", ("privacy.clipping=server",)),
                Arm(
                    "client-side clipping",
                    "client",
                    ("privacy.clipping=client",),
                    baseline=False,
                    shares="server-side clipping",
                ),
            ),
            {"central": DP_TARGETS},
        ),
        Study(
            "llp",
            "Label proportions",
            "FedAvg trained only from bags (every record labeled, held as random bags of k that"
            " keep only their class counts) on the default setup: 100 clients, Dirichlet 0.1, 10"
            " per round, the default CNN, 200 rounds. Noisy proportions: DLLP with bags of 8 and"
            " Laplace label-DP noise on every count. DLLP, IID clients: the same with the records"
            " spread IID over the clients, so that a bag mixes classes as in the anchors' random"
            " bags (under Dirichlet 0.1 a client's bag is mostly one class).",
            (
                "algorithm=fedavg",
                "data.label_ratio=1.0",
                "rounds=200",
                *EVALUATION,
            ),
            (
                Arm(
                    "DLLP",
                    "dllp",
                    ("data.llp_method=dllp",),
                    {"bag_size": (1, 8, 32, 128), "proportion": (0.5, 1.0, 2.0, 4.0, 8.0)},
                ),
                Arm(
                    "BP",
                    "bp",
                    ("data.llp_method=bp",),
                    {"bag_size": (8, 32, 128)},
                    baseline=False,
                    shares="DLLP",  # the same instance-label run
                ),
                Arm(
                    "DLLP, IID clients",
                    "dllp-iid",
                    ("data.llp_method=dllp", "data.partition=iid"),
                    {"bag_size": (8, 32, 128)},
                ),
            ),
            {},
        ),
    )
}

KINDS = {  # kind -> (column name, axis label, log axis)
    "epsilon": ("target epsilon", "epsilon (record-level)", True),
    "central": ("target epsilon", "epsilon (client-level)", True),
    "noise": ("z", "epsilon (record-level)", True),
    "central_z": ("z", "epsilon (client-level)", True),
    "bag_size": ("bag size", "bag size", True),
    "proportion": ("proportion epsilon", "label-DP epsilon of the counts", True),
}


@dataclass(frozen=True)
class Point:
    arm: Arm
    kind: str | None  # None: the arm's non-private run
    x: float | None
    run: Run = field(compare=False)


def _noise_history(cfg: dict, kind: str) -> list[tuple[float, int]]:
    """(sample rate, steps) of every private loop over the run, as the server will account it
    (nominal equal-size clients)."""
    d, a, rounds = cfg["data"], cfg["algorithm"], cfg["rounds"]
    if kind in ("central", "central_z"):
        return [(cfg["clients_per_round"] / d["num_clients"], rounds)]
    pool = (d["train_samples"] or 60000) * (1 - d["val_fraction"]) / d["num_clients"]
    labeled = max(1, round(pool * d["label_ratio"]))
    share = min(1.0, cfg["clients_per_round"] / d["num_clients"])
    out = [(min(1.0, a["batch_size"] / labeled), round(a["local_steps"] * rounds * share))]
    if a.get("unlabeled_steps") and pool > labeled:
        out.append(
            (
                min(1.0, a["batch_size"] / (pool - labeled)),
                round(a["unlabeled_steps"] * rounds * share),
            )
        )
    return out


def calibrate(target: float, history: list[tuple[float, int]], *, delta: float) -> float:
    """The noise multiplier (3 significant digits, rounded up) whose composition of ``history``
    gives at most ``target`` epsilon at ``delta``: bisection on log z."""
    from fedlabel.privacy.accountant import epsilon

    def eps(z: float) -> float:
        return epsilon([(z, q, s) for q, s in history], delta=delta)

    lo, hi = 0.1, 100.0
    if eps(hi) > target:
        raise ValueError(f"epsilon {target} needs a noise multiplier above {hi}")
    for _ in range(18):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if eps(mid) > target else (lo, mid)
    z = float(f"{hi:.3g}")
    return z if eps(z) <= target else float(f"{hi * 1.001:.3g}")


class Calibrations:
    """Noise multipliers by (target, history, delta), cached in a JSON file (committed beside a
    study's archive, so that a fresh clone checks its runs without recomputing)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.cache: dict[str, float] = {}
        if path is not None and path.is_file():
            self.cache = json.loads(path.read_text())

    def __call__(self, target: float, history: list[tuple[float, int]], delta: float) -> float:
        key = json.dumps([target, history, delta])
        if key not in self.cache:
            self.cache[key] = calibrate(target, history, delta=delta)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(json.dumps(self.cache, indent=1, sort_keys=True) + "\n")
        return self.cache[key]


def _series_overrides(study: Study, kind: str, x: float, arm_base: list[str], z_of) -> list[str]:
    if kind in ("epsilon", "noise", "central", "central_z"):
        mechanism = "central_dp" if kind.startswith("central") else "dpsgd"
        z = x
        if kind in ("epsilon", "central"):
            cfg = intended(Run("calibration", (*arm_base, f"privacy={mechanism}")))
            z = z_of(x, _noise_history(cfg, kind), cfg["privacy"]["delta"])
        return [f"privacy={mechanism}", f"privacy.noise_multiplier={z:g}"]
    if kind == "bag_size":
        return ["privacy=none", f"data.bag_size={int(x)}"]
    return ["privacy=none", f"data.bag_size={study.bag_size}", f"data.proportion_epsilon={x:g}"]


def plan(study: Study, extra: list[str], z_of) -> list[Point]:
    """Every run of the study: per arm its non-private run, then each series point."""
    points = []
    for arm in study.arms:
        arm_base = [*study.base, *arm.overrides, *extra]
        if arm.baseline:
            points.append(
                Point(arm, None, None, Run(f"{arm.slug}_none", (*arm_base, "privacy=none")))
            )
        for kind, values in (study.series if arm.series is None else arm.series).items():
            for x in values:
                more = _series_overrides(study, kind, x, arm_base, z_of)
                points.append(
                    Point(arm, kind, x, Run(f"{arm.slug}_{kind}{x:g}", (*arm_base, *more)))
                )
    return points


def custom_study(args: argparse.Namespace) -> Study:
    series = {
        "noise": tuple(args.noise),
        "central_z": tuple(args.central_noise),
        "bag_size": tuple(args.bag_sizes),
        "proportion": tuple(args.proportion_epsilons),
    }
    return Study(
        "custom",
        args.section,
        "Base overrides of every run: " + (" ".join(f"`{o}`" for o in args.overrides) or "none"),
        ("engine=inprocess",),
        (Arm("runs", "run"),),
        {k: v for k, v in series.items() if v},
        bag_size=args.proportion_bag_size,
        last=args.last,
    )


# --------------------------------------------------------------------------------------------
# results and report


def result(point: Point, summary: dict, last: int) -> dict[str, Any]:
    evaluated = [
        (r["round"], r["accuracy"]) for r in summary["rounds"] if r["accuracy"] is not None
    ]
    tail = [a for _, a in evaluated[-last:]]
    quarter = summary["config"]["rounds"] * 3 // 4
    before = [a for rnd, a in evaluated if rnd <= quarter][-last:]
    cfg = summary["config"]
    return {
        "arm": point.arm.label,
        "kind": point.kind,
        "x": point.x,
        "z": cfg["privacy"]["noise_multiplier"] if cfg["privacy"]["name"] != "none" else None,
        "epsilon": summary["rounds"][-1].get("epsilon"),
        "delta": cfg["privacy"]["delta"],
        "final_accuracy": summary["final_accuracy"],
        "mean_accuracy": sum(tail) / len(tail),
        "late_gain": sum(tail) / len(tail) - sum(before) / len(before) if before else None,
        "best_val_accuracy": summary.get("best_val_accuracy"),
        "wall_seconds": summary["wall_seconds"],
        "cpu_seconds": summary.get("cpu_seconds"),
        "rounds": cfg["rounds"],
    }


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _table(
    kind: str, rows: list[dict], bases: dict[str, dict], base_of: dict[str, dict | None]
) -> list[str]:
    given = kind in ("noise", "central_z")  # the series' value is z itself
    head = (
        f"| arm | {'' if given else KINDS[kind][0] + ' | '}z | epsilon | final acc | mean of last"
        " | gain over the last quarter | best val acc | wall (s) | CPU (s) | CPU vs non-private |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in [*bases.values(), *rows]:
        base = base_of.get(r["arm"])
        ratio = (
            r["cpu_seconds"] / base["cpu_seconds"]
            if base and r["cpu_seconds"] and base.get("cpu_seconds")
            else None
        )
        x = "none" if r["kind"] is None else format(r["x"], "g")
        lines.append(
            f"| {r['arm']} | {'' if given else x + ' | '}{_f(r['z'], 'g')} |"
            f" {_f(r['epsilon'], '.2f')} | {r['final_accuracy']:.4f} |"
            f" {r['mean_accuracy']:.4f} | {_f(r['late_gain'], '+.4f')} |"
            f" {_f(r['best_val_accuracy'], '.4f')} | {r['wall_seconds']:.0f} |"
            f" {_f(r['cpu_seconds'], '.0f')} | {_f(ratio, '.2f')}{'x' if ratio else ''} |"
        )
    return lines


def _plot(study: Study, kind: str, rows: list[dict], bases: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp = kind in ("epsilon", "central", "noise", "central_z")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, arm in enumerate(dict.fromkeys(r["arm"] for r in rows)):
        color = f"C{i}"
        pts = sorted(
            (r["epsilon"] if dp else r["x"], r["mean_accuracy"]) for r in rows if r["arm"] == arm
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=arm)
        if arm in bases:
            ax.axhline(bases[arm]["mean_accuracy"], color=color, linestyle="--", linewidth=1)
    if bases:
        ax.plot([], [], color="grey", linestyle="--", label="no privacy (same colour)")
    for j, (label, x, acc) in enumerate(study.anchors if dp else ()):
        ax.scatter([x], [acc], marker="*", s=120, color=f"C{7 + j}", label=label, zorder=3)
    if KINDS[kind][2]:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log", base=2 if kind == "bag_size" else 10)
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(KINDS[kind][1])
    ax.set_ylabel("test accuracy (mean of the last evaluations)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(
    study: Study, points: list[Point], results: dict[str, dict], *, report: Path, argv: str
) -> str:
    done = [p for p in points if p.run.name in results]
    bases = {p.arm.label: results[p.run.name] for p in done if p.kind is None}
    base_of = {a.label: bases.get(a.label) or bases.get(a.shares) for a in study.arms}
    wall = sum(results[p.run.name]["wall_seconds"] for p in done)
    cpu = sum(results[p.run.name]["cpu_seconds"] or 0 for p in done)
    delta = next((r["delta"] for r in results.values()), None)
    out = [
        f"## {study.title}",
        "",
        study.about,
        "",
        (
            f"`fedlabel privacy-sweep {argv}`: {len(done)} of {len(points)} runs finished"
            f" (rewritten {datetime.now():%Y-%m-%d}; {wall / 3600:.1f} h wall, {cpu / 3600:.1f}"
            f" CPU-hours). Accuracy = the final test accuracy and the mean of the last"
            f" {study.last} evaluations; gain over the last quarter = that mean minus the mean of"
            " the evaluations up to three quarters of the rounds (near 0: flattened);"
            f" epsilon as measured at the end, at delta = {delta}; z = the noise multiplier; CPU ="
            " user + system seconds of the run."
        ),
        "",
    ]
    slug = "".join(c if c.isalnum() else "-" for c in study.title.lower()).strip("-")
    for kind in KINDS:
        rows = [results[p.run.name] for p in done if p.kind == kind]
        if not rows:
            continue
        png = report.parent / f"privacy-{slug}-{kind}.png"
        _plot(study, kind, rows, bases, png)
        out += [
            f"### Accuracy against {KINDS[kind][1]}",
            "",
            *_table(kind, rows, bases, base_of),
            "",
            f"![{study.title}: accuracy against {KINDS[kind][1]}]({png.name})",
            "",
        ]
    if study.anchors:
        out += [
            "Marked on the plot: "
            + "; ".join(f"{a[0]}: {a[2]:.1%} at epsilon {a[1]:g}" for a in study.anchors)
            + ".",
            "",
        ]
    out += [
        "<details><summary>Each run alone</summary>",
        "",
        "```bash",
        *(shlex.join(["fedlabel", "simulate", *p.run.overrides]) for p in points),
        "```",
        "</details>",
        "",
    ]
    return "\n".join(out)


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


# --------------------------------------------------------------------------------------------
# command line


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="fedlabel privacy-sweep", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--study", choices=sorted(STUDIES), help="one of docs/privacy.md's studies")
    ap.add_argument(
        "--noise", type=_floats, default=[], help="DP-SGD noise multipliers, e.g. 0.5,1,2"
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
    ap.add_argument("--proportion-epsilons", type=_floats, default=[], help="label-DP epsilons")
    ap.add_argument("--proportion-bag-size", type=int, default=8, help="bags of that series")
    ap.add_argument("--last", type=int, default=5, help="accuracy = mean of the last N evaluations")
    ap.add_argument(
        "--out",
        "--workdir",
        dest="out",
        default="",
        help="run folders (default outputs/privacy-sweep/<study>)",
    )
    ap.add_argument(
        "--archive",
        default="",
        help="finished runs, gzipped (default for --study: benchmarks/runs/privacy-<study>)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each one torch thread)")
    ap.add_argument(
        "--runs",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only the runs whose names match this shell-style pattern (e.g. 'fedavg-20-*';"
        " repeat for more); the report still shows every finished run",
    )
    ap.add_argument(
        "--report", default="docs/privacy.md", help="markdown file to write the section into"
    )
    ap.add_argument("--section", default="DP", help="heading of a study made from the flags")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="write the report from finished runs, run nothing",
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides added to every run")
    args = ap.parse_args(argv)
    custom = args.noise or args.central_noise or args.bag_sizes or args.proportion_epsilons
    if bool(args.study) == bool(custom):
        ap.error(
            "give --study, or the series of a study of your own (--noise, --central-noise,"
            " --bag-sizes, --proportion-epsilons), not both"
        )
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def study_argv(argv: list[str]) -> list[str]:
    """The arguments that define the runs (the report shows them as the study's command):
    without --render-only, --report, --jobs and --runs, which only say where, how fast and what
    first."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--report", "--jobs", "--runs"):
            skip = True
        elif a != "--render-only" and not a.startswith(("--report=", "--jobs=", "--runs=")):
            out.append(a)
    return out


def main(argv: list[str]) -> int:
    from fedlabel.data import DataError

    args = parse_args(argv)
    study = STUDIES[args.study] if args.study else custom_study(args)
    slug = args.study or "".join(c if c.isalnum() else "-" for c in args.section.lower())
    out = Path(args.out or f"outputs/privacy-sweep/{slug}").resolve()
    archive = (
        Path(args.archive).resolve()
        if args.archive
        else (Path(f"benchmarks/runs/privacy-{slug}").resolve() if args.study else None)
    )
    z_of = Calibrations(archive / "calibration.json" if archive else out / "calibration.json")
    extra = list(args.overrides)
    try:
        points = plan(study, extra, z_of)  # every run composes and validates before any work
        for p in points:
            intended(p.run)
    except (SystemExit, ValueError) as err:
        print(f"fedlabel privacy-sweep: config error: {err}", file=sys.stderr)
        return 2
    store = Store(out, archive)
    for p in points:  # run folders brought back from elsewhere
        store.keep(p.run)
    errors: list[str] = []
    if not args.render_only:
        out.mkdir(parents=True, exist_ok=True)
        chosen = [
            p.run
            for p in points
            if not args.runs or any(fnmatch.fnmatchcase(p.run.name, pat) for pat in args.runs)
        ]
        if not chosen:
            names = " ".join(sorted({p.run.name for p in points}))
            print(f"fedlabel privacy-sweep: --runs matches none of: {names}", file=sys.stderr)
            return 2
        try:
            errors = run_all(store, chosen, extra=[], jobs=args.jobs)
        except DataError as err:
            print(f"fedlabel privacy-sweep: data error: {err}", file=sys.stderr)
            return 2
    results = {}
    for p in points:
        s = store.summary(p.run)
        if s is not None and store.completed(p.run, s):
            results[p.run.name] = result(p, s, study.last)
    argv_shown = shlex.join(study_argv(argv))
    if results:
        report = Path(args.report).resolve()
        text = render(study, points, results, report=report, argv=argv_shown)
        write_section(report, study.title, text)
        print(f"{len(results)} of {len(points)} runs in {report} (section {study.title!r})")
    if errors:
        print(f"fedlabel privacy-sweep: {len(errors)} run(s) failed (above)", file=sys.stderr)
        return 1
    return 0
