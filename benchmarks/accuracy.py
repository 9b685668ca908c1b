"""The accuracy benchmark: the shape of the FedLabel paper's Tables 3, 4 and 1 on Fashion-MNIST.

Every registered algorithm (fedlabel.algorithms.ALGORITHMS, so methods added later appear by
themselves) at each Dirichlet alpha and label ratio, for each seed, plus FedAvg with 100% labels
as the reference, then FedLabel's sensitivity to beta, lambda0 and tau (local_steps =
unlabeled_steps) in small sweeps (one setting, fewer rounds). Each run is one `python -m fedlabel
simulate experiment=fmnist_cross_device ...` command (100 clients, 10 per round, GroupNorm CNN;
--experiment cross_silo: 10 silos, all in every round, GroupNorm ResNet-18) on
the in-process engine with one torch thread, --jobs runs at a time, evaluated every --eval-every
rounds and in each of the last --last rounds (the reported accuracy is the mean of those).

Runs are resumable and the grid may be filled over several sessions or machines: a completed run
(summary.json) is not run again, an interrupted or shorter one continues from its checkpoint
(`resume=true`; raising --rounds extends finished runs). Run folders (--out, with checkpoints) are
not committed; each completed run's summary is also kept, gzipped, in --archive (default
benchmarks/runs/<name of --out> for an --out inside this checkout), which is committed: a fresh
clone rewrites the report from it and does not run those runs again. `touch <--out>/STOP` lets the
runs in progress finish and starts no new one (e.g. before a machine is handed back).

Runs start in the order of --alphas, then --label-ratios, then seeds, then methods, so the first
settings fill first (--seeds-first: every setting's first seed, then every setting's second, ...).
The report (default docs/results.md) is written from whatever has completed: mean ± std over the
seeds that exist per cell (the count is shown when seeds are missing), the commands, wall time per
method, one PNG of accuracy against round per setting, the sweeps, and the machines that computed
them. `--report-only --no-report` only archives finished runs.

Tuning (--tune) gives every method in --methods, and FedAvg with 100% labels unless
--no-reference, the same budget: one run per value of algorithm.lr in --tune-lrs at
--tune-setting, seed --tune-seed (refused if among --seeds), --tune-rounds rounds, evaluated like
the grid; these runs (a<alpha>_<method>_<ratio>_lr<lr>_s<seed>) live, resume and are archived
beside the grid's. Chosen per method: the lr with the highest validation accuracy (the split
data.val_fraction holds out of every client) averaged over the last --last evaluated rounds, the
smaller lr on a tie; the test accuracy is only shown. --tune runs these runs, not the grid, and
writes --tuned (default benchmarks/tuned.json, committed): the protocol, the command, and per
method whose runs all completed the chosen lr and its score. Where --tuned exists (the default
file: for the experiment it was tuned on) the grid and the sweeps run each method at its chosen
lr (the override algorithm.lr=...; others at their default, "untuned" in the report), and the
report gains a Tuning section: the protocol, every
tuning run's validation / test accuracy, the chosen values and the command.

A completed run counts as done only if its summary's config is what its overrides compose to now
(rounds aside, which extend it; also engine, device, evaluation and output settings, and fields
added since at the value that ran before them, as fedlabel.checkpoint resumes): otherwise the
benchmark stops with one line naming the folder. Run names do not say the lr, so the tuned grid
needs its own --out (and so archive) beside the untuned one in benchmarks/runs/accuracy, whose
table --untuned-archive adds to the report as a section, read as archived, unchecked:

    python benchmarks/accuracy.py --tune --out outputs/bench/accuracy-tuned   # ~2 CPU-hours
    python benchmarks/accuracy.py --out outputs/bench/accuracy-tuned \
        --untuned-archive benchmarks/runs/accuracy                             # the tuned grid

    python benchmarks/accuracy.py --jobs 2                      # the full grid (tens of CPU-hours)
    python benchmarks/accuracy.py --report-only                 # rewrite the report from runs
    python benchmarks/accuracy.py --alphas 0.1 --label-ratios 0.05 --methods fedavg fedlabel \\
        --seeds 0 --rounds 5 --last 2 --no-sweeps --report /tmp/tiny/results.md --out /tmp/tiny \\
        --extra data.num_clients=10 clients_per_round=3 data.train_samples=3000   # a quick try
    python benchmarks/accuracy.py --experiment cross_silo --rounds 100 --seeds 0 --alphas 0.1 \
        --label-ratios 0.05 --methods fedavg fedlabel --no-sweeps --out outputs/bench/cross_silo \
        --report docs/results-cross-silo.md --title "Cross-silo" --extra device=cuda
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "outputs" / "bench" / "accuracy"
DEFAULT_REPORT = ROOT / "docs" / "results.md"
ARCHIVE = ROOT / "benchmarks" / "runs"
sys.path.insert(0, str(ROOT))

from fedlabel.algorithms import ALGORITHMS  # noqa: E402
from fedlabel.runset import Run, Store, intended, run_all  # noqa: E402

# Display names and order of known methods; any other registered name is appended as is.
LABELS = {
    "fedavg": "FedAvg, labeled part only",
    "fedprox": "FedProx, labeled part only",
    "fedavg_uda": "FedAvg + UDA",
    "fedavg_fixmatch": "FedAvg + FixMatch",
    "fedprox_uda": "FedProx + UDA",
    "fedprox_fixmatch": "FedProx + FixMatch",
    "fedtrinet": "FedTriNet",
    "fedmatch": "FedMatch",
    "fedlabel_local_only": "FedLabel, local expert only",
    "fedlabel_global_only": "FedLabel, global expert only",
    "fedlabel": "FedLabel",
    "fedlabel_paper": "FedLabel, paper preset",
}
REFERENCE = "FedAvg, 100% labels"
# configs/experiment/ files the grid runs on, and how the report describes them
EXPERIMENTS = {
    "fmnist_cross_device": "100 clients, 10 per round, GroupNorm CNN",
    "cross_silo": "10 clients (silos), all in every round, GroupNorm ResNet-18",
}
SMOOTH = (
    25  # the curves in the figures are means over this many rounds (accuracy swings round to round)
)
ABLATION = ["fedlabel_local_only", "fedlabel_global_only", "fedlabel"]
SEMI_SUPERVISED = [
    "fedavg_uda",
    "fedavg_fixmatch",
    "fedprox_uda",
    "fedprox_fixmatch",
    "fedtrinet",
    "fedmatch",
]
# Settings kept below the method's paper for equal compute, and the paper's value, run at one
# cell (--sweep-setting) beside the grid's (FixMatch's and UDA's unlabeled batch: mu = 7)
PAPER_SETTINGS = {
    "fedavg_fixmatch": "algorithm.unlabeled_ratio=7",
    "fedavg_uda": "algorithm.unlabeled_ratio=7",
}
TUNED_KEY = "algorithm.lr"  # the tuned setting
DEFAULT_TUNED = ROOT / "benchmarks" / "tuned.json"
SELECTION = (
    "the lr whose validation accuracy, averaged over the last {last} evaluated rounds, is highest"
    " (on a tie the smaller lr); the test set plays no part"
)
SWEEP_KEYS = {
    "beta": ["algorithm.beta"],
    "lambda0": ["algorithm.lambda0"],
    "tau": ["algorithm.local_steps", "algorithm.unlabeled_steps"],
}


@dataclass
class Result:
    evals: list[tuple[int, float]]  # (round, test accuracy) of every evaluated round
    val: list[tuple[int, float]]  # (round, validation accuracy) of every validated round
    wall: float
    rounds: list[dict] = field(repr=False)
    environment: list[dict] = field(repr=False, default_factory=list)
    engine: str = "inprocess"

    def machines(self) -> set[str]:
        """The machines (CPU model, GPU, torch, engine) that computed parts of this run."""
        return {
            f"{e.get('cpu')}{', ' + e['cuda'] if e.get('cuda') else ''} (torch {e.get('torch')}),"
            f" engine={self.engine}"
            for e in self.environment
        }


def shown(path: Path) -> str:
    """A path as the docs show it: relative to this checkout where inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def pct(ratio: float) -> str:
    return f"{ratio * 100:g}"


def grid_run(
    algo: str,
    alpha: float,
    ratio: float,
    seed: int,
    rounds: int,
    *,
    experiment: str,
    extra=(),
    tag: str = "",
    more=(),
) -> Run:
    overrides = (
        f"experiment={experiment}",
        f"algorithm={algo}",
        f"data.alpha={alpha:g}",
        f"data.label_ratio={ratio:g}",
        f"rounds={rounds}",
        f"seed={seed}",
        *more,
        *extra,
    )
    return Run(f"a{alpha:g}_{algo}_{pct(ratio)}{tag}_s{seed}", overrides)


def load(store: Store, run: Run) -> Result | None:
    """The completed run's curves and times, or None."""
    s = store.summary(run)
    if not store.completed(run, s):
        return None
    evals = [(r["round"], r["accuracy"]) for r in s["rounds"] if r["accuracy"] is not None]
    val = [
        (r["round"], r["val_accuracy"]) for r in s["rounds"] if r.get("val_accuracy") is not None
    ]
    return Result(
        evals,
        val,
        s["wall_seconds"],
        s["rounds"],
        s.get("environment") or [],
        s["config"]["engine"]["name"],
    )


def last_mean(r: Result, last: int) -> float:
    return statistics.fmean(a for _, a in r.evals[-last:])


def accuracies(runs: list[Result], last: int) -> list[float]:
    """Each run's test accuracy averaged over its last ``last`` evaluated rounds (one per seed)."""
    return [last_mean(x, last) for x in runs]


def ece_mean(r: Result, last: int) -> float | None:
    """The test ECE (15 bins) averaged over the last ``last`` evaluated rounds; None before ECE."""
    eces = [x["ece"] for x in r.rounds if x.get("ece") is not None][-last:]
    return statistics.fmean(eces) if eces else None


def val_mean(r: Result, last: int, name: str) -> float:
    """The tuning score: the validation accuracy averaged over the last ``last`` validated
    rounds."""
    if not r.val:
        raise SystemExit(f"{name}: no validation accuracy (data.val_fraction=0?); tuning needs it")
    return statistics.fmean(a for _, a in r.val[-last:])


def tuning_runs(protocol: dict) -> dict[tuple[str, float], Run]:
    """(method, lr) -> Run for the tuning protocol (``tuned.json``'s ``protocol``); the method
    "reference" is FedAvg with 100% labels."""
    run_of = partial(grid_run, experiment=protocol["experiment"], extra=protocol["extra"])
    return {
        (m, lr): run_of(
            "fedavg" if m == "reference" else m,
            protocol["alpha"],
            1.0 if m == "reference" else protocol["label_ratio"],
            protocol["seed"],
            protocol["rounds"],
            tag=f"_lr{lr:g}",
            more=[f"{TUNED_KEY}={lr:g}"],
        )
        for m in protocol["methods"]
        for lr in protocol["lrs"]
    }


def choose(protocol: dict, results: dict[tuple[str, float], Result | None]) -> dict[str, dict]:
    """Per method whose every tuning run completed: the lr with the highest tuning score (the
    smaller lr on a tie) and that score."""
    chosen = {}
    for m in protocol["methods"]:
        if any(results[(m, lr)] is None for lr in protocol["lrs"]):
            continue
        scores = {
            lr: val_mean(results[(m, lr)], protocol["last"], f"tuning run {m} lr {lr:g}")
            for lr in protocol["lrs"]
        }
        best = max(sorted(scores), key=scores.__getitem__)  # max keeps the first of equals
        chosen[m] = {"lr": best, "val_accuracy": scores[best]}
    return chosen


def late_gain(r: Result) -> float:
    """Mean accuracy evaluated in the last 10% of rounds minus that in the 10% before: ~0 once
    flat."""
    n = r.rounds[-1]["round"]
    tail = [a for t, a in r.evals if t > 0.9 * n]
    before = [a for t, a in r.evals if 0.8 * n < t <= 0.9 * n]
    return statistics.fmean(tail) - statistics.fmean(before) if tail and before else float("nan")


def mean_std(xs: list[float], want: int) -> str:
    if not xs:
        return "-"
    text = (
        f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs):.4f}"
        if len(xs) > 1
        else f"{xs[0]:.4f}"
    )
    return text if len(xs) == want else f"{text} (n={len(xs)})"


def difference(a: list[float], b: list[float]) -> str:
    """Mean of ``a`` minus mean of ``b`` in accuracy points, and whether it exceeds twice its
    standard
    error (Welch's: sqrt(s_a^2/n_a + s_b^2/n_b)); no verdict with fewer than 2 seeds on either side.
    """
    if not a or not b:
        return "-"
    d = 100 * (statistics.fmean(a) - statistics.fmean(b))
    if len(a) < 2 or len(b) < 2:
        return f"{d:+.1f} (one seed)"
    se = 100 * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return f"{d:+.1f} ± {se:.1f}, " + (
        "above" if d > 2 * se else "below" if d < -2 * se else "within noise"
    )


def pooled(rs: list[Result], key: str, last: int) -> str:
    vals = [x[key] for r in rs for x in r.rounds[-last:] if x.get(key) is not None]
    return f"{statistics.fmean(vals):.3f}" if vals else "-"


def parse_sweeps(items: list[str]) -> dict[str, list[float]]:
    sweeps = {}
    for item in items:
        key, _, values = item.partition("=")
        if key not in SWEEP_KEYS or not values:
            raise SystemExit(f"--sweep {item!r}: expected one of {sorted(SWEEP_KEYS)}=v1,v2,...")
        sweeps[key] = [float(v) for v in values.split(",")]
    return sweeps


def build_grid(
    args, methods, settings, lrs: dict[str, float] | None = None
) -> tuple[dict[tuple, Run], dict[tuple, Run], dict[str, list[float]]]:
    """The grid's and the sweeps' runs; ``lrs``: the tuned lr per method (and "reference")."""
    lrs = lrs or {}
    tuned = lambda m: [f"{TUNED_KEY}={lrs[m]:g}"] if m in lrs else []  # noqa: E731
    run_of = partial(grid_run, experiment=args.experiment, extra=args.extra)
    grid: dict[tuple, Run] = {}
    for alpha, ratio in settings:
        for seed in args.seeds:
            ref = (alpha, None, "reference", seed)
            if ref not in grid and not args.no_reference:  # with the first label ratio of its alpha
                grid[ref] = run_of("fedavg", alpha, 1.0, seed, args.rounds, more=tuned("reference"))
            for m in methods:
                grid[(alpha, ratio, m, seed)] = run_of(
                    m, alpha, ratio, seed, args.rounds, more=tuned(m)
                )
    for m, value in PAPER_SETTINGS.items():  # one cell at the paper's setting (no weakening)
        if args.no_paper_cell or m not in methods:
            continue
        key, tag = f"{m}@{value}", "_" + value.split(".")[-1].replace("=", "")
        for seed in args.seeds:
            grid[(*args.sweep_setting, key, seed)] = run_of(
                m, *args.sweep_setting, seed, args.rounds, tag=tag, more=[*tuned(m), value]
            )
    sweeps = {} if args.no_sweeps or "fedlabel" not in ALGORITHMS else parse_sweeps(args.sweep)
    sweep_runs: dict[tuple, Run] = {}
    alpha_s, ratio_s = args.sweep_setting
    rounds_s = args.sweep_rounds or args.rounds
    defaults = ALGORITHMS["fedlabel"].params()
    rtag = "" if rounds_s == args.rounds else f"_r{rounds_s}"
    for key, values in sweeps.items():
        for v in values:
            for seed in args.sweep_seeds:
                tag, more = rtag, tuned("fedlabel")
                if v != getattr(defaults, SWEEP_KEYS[key][0].split(".")[1]):
                    # not the default (that one run serves every sweep)
                    value = f"{int(v)}" if key == "tau" else f"{v:g}"
                    tag = f"_{key}{value}{rtag}"
                    more = [*more, *(f"{k}={value}" for k in SWEEP_KEYS[key])]
                run = run_of("fedlabel", alpha_s, ratio_s, seed, rounds_s, tag=tag, more=more)
                sweep_runs[(key, v, seed)] = run
    return grid, sweep_runs, sweeps


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--experiment",
        choices=EXPERIMENTS,
        default="fmnist_cross_device",
        help="configs/experiment/ file",
    )
    ap.add_argument("--rounds", type=int, default=250)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--label-ratios", type=float, nargs="+", default=[0.05, 0.01, 0.2])
    ap.add_argument("--methods", nargs="+", default=None, help="registered names (default: all)")
    ap.add_argument(
        "--last",
        type=int,
        default=10,
        help="evaluate each of the last N rounds and report their mean accuracy",
    )
    ap.add_argument(
        "--eval-every", type=int, default=5, help="evaluate every N rounds before the last --last"
    )
    ap.add_argument(
        "--sweep",
        nargs="*",
        default=["beta=0.3,0.5,0.7,0.9", "lambda0=0,0.5,1,2", "tau=5,10,20"],
        help="FedLabel sensitivity sweeps, KEY=v1,v2 with KEY in beta, lambda0, tau",
    )
    ap.add_argument("--no-sweeps", action="store_true")
    ap.add_argument(
        "--no-paper-cell",
        action="store_true",
        help="leave out the runs at the paper's settings (PAPER_SETTINGS) at --sweep-setting",
    )
    ap.add_argument(
        "--no-reference", action="store_true", help="leave out FedAvg with 100%% labels"
    )
    ap.add_argument(
        "--sweep-setting", type=float, nargs=2, default=[0.1, 0.05], metavar=("ALPHA", "RATIO")
    )
    ap.add_argument("--sweep-seeds", type=int, nargs="+", default=[0])
    ap.add_argument(
        "--sweep-rounds", type=int, default=100, help="rounds of the sweep runs (0: --rounds)"
    )
    ap.add_argument(
        "--sweeps-first", action="store_true", help="start the sweep runs before the grid"
    )
    ap.add_argument(
        "--seeds-first",
        action="store_true",
        help="start every setting's first seed before any setting's second (a whole table sooner)",
    )
    ap.add_argument(
        "--sweeps-only",
        action="store_true",
        help="run only the sweep runs (the report still covers the grid)",
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--archive",
        type=Path,
        default=None,
        help=(
            "committed summaries of completed runs (default: benchmarks/runs/<name of --out> when"
            " --out is inside this checkout, else none)"
        ),
    )
    ap.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    ap.add_argument("--title", default="Results", help="the report's heading")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing; write the report from completed runs",
    )
    ap.add_argument(
        "--no-report",
        action="store_true",
        help="run, but write no report (e.g. on a machine without matplotlib)",
    )
    ap.add_argument("--extra", nargs="*", default=[], help="extra overrides for every run")
    ap.add_argument(
        "--tune",
        action="store_true",
        help="run the tuning runs (not the grid) and write the chosen lrs to --tuned",
    )
    ap.add_argument(
        "--tune-lrs", type=float, nargs="+", default=[0.0125, 0.025, 0.05, 0.1], help=TUNED_KEY
    )
    ap.add_argument(
        "--tune-setting", type=float, nargs=2, default=[0.1, 0.05], metavar=("ALPHA", "RATIO")
    )
    ap.add_argument("--tune-seed", type=int, default=100, help="not one of --seeds")
    ap.add_argument("--tune-rounds", type=int, default=100)
    ap.add_argument(
        "--tuned",
        type=Path,
        default=DEFAULT_TUNED,
        help="the chosen lrs (committed); the grid runs with them where the file exists",
    )
    ap.add_argument(
        "--untuned-archive",
        type=Path,
        default=None,
        help="an archive of the same grid run untuned: its table becomes a section of the report",
    )
    ap.add_argument(
        "--untuned-rounds", type=int, default=0, help="rounds of those runs (0: --rounds)"
    )
    args = ap.parse_args()

    known = [m for m in LABELS if m in ALGORITHMS] + [m for m in ALGORITHMS if m not in LABELS]
    unknown = sorted(set(args.methods or []) - set(ALGORITHMS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; registered: {sorted(ALGORITHMS)}")
    methods = [m for m in known if m in (args.methods or known)]
    settings = [(a, r) for a in args.alphas for r in args.label_ratios]
    archive = args.archive or (
        ARCHIVE / args.out.name if args.out.resolve().is_relative_to(ROOT) else None
    )
    store = Store(args.out, archive)
    errors: list[str] = []
    if args.tune:
        tuned = tune(args, store, methods, errors)
    else:
        tuned = json.loads(args.tuned.read_text()) if args.tuned.is_file() else None
    default_file = args.tuned.resolve() == DEFAULT_TUNED
    if tuned and default_file and tuned["protocol"]["experiment"] != args.experiment:
        print(f"{shown(args.tuned)}: tuned on another experiment; {args.experiment} runs untuned")
        tuned = None
    if tuned:
        protocol = tuned["protocol"]
        if protocol["experiment"] != args.experiment:
            raise SystemExit(
                f"--tuned {shown(args.tuned)}: tuned on {protocol['experiment']}, not"
                f" {args.experiment}; give --tuned another file"
            )
        if protocol["seed"] in args.seeds:
            raise SystemExit(
                f"--seeds: {protocol['seed']} is the tuning seed of {shown(args.tuned)}; the"
                " reported seeds must not include it"
            )
    lrs = {m: c["lr"] for m, c in tuned["chosen"].items()} if tuned else None
    grid, sweep_runs, sweeps = build_grid(args, methods, settings, lrs)
    tuning = tuning_runs(tuned["protocol"]) if tuned else {}
    for run in [
        *grid.values(),
        *sweep_runs.values(),
        *tuning.values(),
    ]:  # e.g. run folders brought back from another machine
        store.keep(run)

    if not args.report_only and not args.tune:
        runs = (
            [r for _, r in sorted(grid.items(), key=lambda kv: args.seeds.index(kv[0][3]))]
            if args.seeds_first
            else list(grid.values())
        )
        order = (
            [*sweep_runs.values(), *runs] if args.sweeps_first else [*runs, *sweep_runs.values()]
        )
        if args.sweeps_only:
            order = list(sweep_runs.values())
        errors += run_grid(args, store, order)
    if not args.no_report:
        write_report(args, store, methods, settings, grid, sweeps, sweep_runs, tuned)
    if errors:
        raise SystemExit(f"{len(errors)} run(s) failed (above)")


def run_grid(args, store: Store, runs: list[Run]) -> list[str]:
    """Run (or continue) those of ``runs`` not completed, --jobs at a time; their errors."""
    evaluation = [f"eval_every={args.eval_every}", f"eval_last={args.last}"]
    return run_all(store, runs, extra=evaluation, jobs=args.jobs)


def tune(args, store: Store, methods: list[str], errors: list[str]) -> dict:
    """--tune: run the tuning runs (unless --report-only) and write --tuned from those that
    completed; returns its content."""
    if args.tune_seed in args.seeds:
        raise SystemExit(
            f"--tune-seed {args.tune_seed} is among --seeds; the reported seeds must not include it"
        )
    protocol = {
        "experiment": args.experiment,
        "methods": ([] if args.no_reference else ["reference"]) + methods,
        "key": TUNED_KEY,
        "lrs": sorted(args.tune_lrs),
        "alpha": args.tune_setting[0],
        "label_ratio": args.tune_setting[1],
        "seed": args.tune_seed,
        "rounds": args.tune_rounds,
        "last": args.last,
        "eval_every": args.eval_every,
        "extra": args.extra,
    }
    runs = tuning_runs(protocol)
    if not args.report_only:
        errors += run_grid(args, store, list(runs.values()))
    chosen = choose(protocol, {k: load(store, r) for k, r in runs.items()})
    tuned = {
        "protocol": protocol,
        "selection": SELECTION.format(last=args.last),
        "command": command_line(args, methods),
        "chosen": chosen,
    }
    args.tuned.parent.mkdir(parents=True, exist_ok=True)
    args.tuned.write_text(json.dumps(tuned, indent=1) + "\n")
    missing = [m for m in protocol["methods"] if m not in chosen]
    print(f"{shown(args.tuned)}: chosen for {len(chosen)} of {len(protocol['methods'])}", end="")
    print(f" (not yet: {' '.join(missing)})" if missing else "", flush=True)
    return tuned


def command_line(args, methods) -> str:
    parts = [
        "python benchmarks/accuracy.py",
        *([f"--experiment {args.experiment}"] * (args.experiment != "fmnist_cross_device")),
        f"--rounds {args.rounds}",
        f"--seeds {' '.join(map(str, args.seeds))}",
        f"--alphas {' '.join(f'{a:g}' for a in args.alphas)}",
        f"--label-ratios {' '.join(f'{r:g}' for r in args.label_ratios)}",
        f"--last {args.last} --eval-every {args.eval_every}",
        f"--jobs {args.jobs}",
    ]
    if args.methods:
        parts.append(f"--methods {' '.join(methods)}")
    if args.no_sweeps:
        parts.append("--no-sweeps")
    else:
        parts.append(
            f"--sweep {' '.join(args.sweep)} --sweep-seeds {' '.join(map(str, args.sweep_seeds))} "
            f"--sweep-rounds {args.sweep_rounds}"
        )
    if args.no_paper_cell:
        parts.append("--no-paper-cell")
    if args.tune:
        parts.append(
            f"--tune --tune-lrs {' '.join(f'{lr:g}' for lr in args.tune_lrs)}"
            f" --tune-setting {' '.join(f'{v:g}' for v in args.tune_setting)}"
            f" --tune-seed {args.tune_seed} --tune-rounds {args.tune_rounds}"
        )
    if args.no_reference:
        parts.append("--no-reference")
    if args.extra:
        parts.append(f"--extra {' '.join(args.extra)}")
    for flag, value, default in (
        ("--out", args.out, DEFAULT_OUT),
        ("--report", args.report, DEFAULT_REPORT),
        ("--tuned", args.tuned, DEFAULT_TUNED),
    ):
        if value.resolve() != default:
            parts.append(f"{flag} {shown(value)}")
    if args.archive:
        parts.append(f"--archive {shown(args.archive)}")
    if args.untuned_archive:
        parts.append(f"--untuned-archive {shown(args.untuned_archive)}")
        if args.untuned_rounds:
            parts.append(f"--untuned-rounds {args.untuned_rounds}")
    if args.title != "Results":
        parts.append(f"--title {shlex.quote(args.title)}")
    return " ".join(parts)


def claims_section(args, settings, cell, label) -> list[str]:
    """The paper's claims about FedLabel, setting by setting: differences of the cell means."""
    acc = lambda a, r, m: accuracies(cell(a, r, m), args.last)  # noqa: E731
    lines = [
        "",
        "## The paper's claims, setting by setting",
        "",
        (
            "FedLabel's accuracy minus another row's, in points (mean over seeds of the last-rounds"
            " mean), ± the"
        ),
        (
            'standard error of that difference (Welch: sqrt(s1²/n1 + s2²/n2)); "above"/"below" when'
            " the difference"
        ),
        (
            'exceeds twice it, else "within noise". The paper expects: above the best'
            " semi-supervised baseline"
        ),
        (
            "(best: the highest mean in that setting), far above labeled-only FedAvg, near FedAvg"
            " with 100% labels,"
        ),
        "above both fixed experts.",
        "",
        (
            "| setting | vs best semi-supervised | vs FedAvg, labeled only | vs FedAvg, 100% labels"
            " | vs local expert only | vs global expert only |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for a, r in settings:
        ours = acc(a, r, "fedlabel")
        if not ours:
            continue
        semi = {
            m: xs for m in SEMI_SUPERVISED if (xs := acc(a, r, m))
        }  # a row not run has no results
        best = max(semi, key=lambda m: statistics.fmean(semi[m]), default=None)
        others = [f"{difference(ours, semi[best])} ({label(best)})" if best else "-"]
        others += [
            difference(ours, acc(a, r, m))
            for m in ("fedavg", "reference", "fedlabel_local_only", "fedlabel_global_only")
        ]
        lines.append(f"| Dir({a:g}), {pct(r)}% | " + " | ".join(others) + " |")
    return lines


def calibration_section(args, settings, cell, rows) -> list[str]:
    """ECE per method and setting, and whether semi-supervised learning improves it where it
    improves accuracy (the radio-galaxy paper's finding: it does not)."""
    ece = lambda a, r, m: [e for x in cell(a, r, m) if (e := ece_mean(x, args.last)) is not None]  # noqa: E731
    acc = lambda a, r, m: accuracies(cell(a, r, m), args.last)  # noqa: E731
    lines = [
        "",
        "## Calibration",
        "",
        "Expected calibration error (15 equal-width confidence bins) of the global model on the"
        f" test set, mean ± std over seeds of the mean of the last {args.last} evaluated rounds;"
        " lower is better calibrated.",
    ]
    for alpha in args.alphas:
        ratios = [r for a, r in settings if a == alpha]
        lines += [
            "",
            f"ECE, Dirichlet({alpha:g}):",
            "",
            "| method | " + " | ".join(f"{pct(r)}% labels" for r in ratios) + " |",
            "|---|" + "---|" * len(ratios),
        ]
        for m in rows:
            cols = [mean_std(ece(alpha, r, m), len(args.seeds)) for r in ratios]
            lines.append(f"| {label(m)} | " + " | ".join(cols) + " |")
    others = [m for m in rows if m not in ("reference", "fedavg", "fedprox")]
    lines += [
        "",
        "Each semi-supervised method against FedAvg on the labeled part only, in points: accuracy"
        " difference; ECE difference (negative: better calibrated), each ± its standard error"
        ' and "above"/"below" beyond twice it.',
        "",
        "| method | " + " | ".join(f"Dir({a:g}), {pct(r)}%" for a, r in settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    better_acc = better_both = worse_ece = 0
    for m in others:
        cols = []
        for a, r in settings:
            da, de = (
                difference(acc(a, r, m), acc(a, r, "fedavg")),
                difference(ece(a, r, m), ece(a, r, "fedavg")),
            )
            cols.append(f"{da}; ECE {de}")
            if da.endswith("above"):
                better_acc += 1
                better_both += de.endswith("below")
                worse_ece += de.endswith("above")
        lines.append(f"| {label(m)} | " + " | ".join(cols) + " |")
    lines += [
        "",
        f"Accuracy above labeled-only FedAvg in {better_acc} (method, setting) pairs; in"
        f" {better_both} of them the ECE is also below FedAvg's beyond twice its standard error"
        f" (better calibrated), in {worse_ece} above it (worse).",
    ]
    return lines


def paper_cell_section(args, cell, methods) -> list[str]:
    """FixMatch/UDA at the grid's unlabeled batch and at the paper's, at --sweep-setting."""
    a, r = args.sweep_setting
    acc = lambda m: accuracies(cell(a, r, m), args.last)  # noqa: E731

    def wall(m: str) -> str:
        walls = [x.wall for x in cell(a, r, m)]
        return f"{statistics.median(walls):.0f}" if walls else "-"

    lines = [
        "",
        f"## At the papers' settings (Dirichlet({a:g}), {pct(r)}% labels)",
        "",
        "The grid keeps settings below some method's own paper so that every method does about the"
        " same work per round: FixMatch's and UDA's unlabeled batch is as large as the labeled one"
        " (mu = 1), where their papers draw 7 times as many unlabeled samples (mu = 7). The same"
        " runs at the papers' values, at the tuned lr:",
        "",
        "| method | grid's setting | paper's setting | paper's minus grid's (points) | wall s/run"
        " (grid's / paper's) |",
        "|---|---|---|---|---|",
    ]
    for m, value in ((m, v) for m, v in PAPER_SETTINGS.items() if m in methods):
        key = f"{m}@{value}"
        lines.append(
            f"| {label(m)}, {value} | {mean_std(acc(m), len(args.seeds))} |"
            f" {mean_std(acc(key), len(args.seeds))} | {difference(acc(key), acc(m))} |"
            f" {wall(m)} / {wall(key)} |"
        )
    return lines


def label(m: str) -> str:
    return REFERENCE if m == "reference" else LABELS.get(m, m)


def cell_of(results: dict[tuple, Result | None], seeds):
    """cell(alpha, ratio, method) -> the completed runs of that grid cell."""

    def cell(alpha, ratio, m) -> list[Result]:
        found = [results.get((alpha, None if m == "reference" else ratio, m, s)) for s in seeds]
        return [x for x in found if x is not None]

    return cell


def accuracy_table(cell, alpha, ratios, rows, args, marked=lambda m: "") -> list[str]:
    lines = [
        "| method | " + " | ".join(f"{pct(r)}% labels" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
    ]
    for m in rows:
        means = [
            mean_std(accuracies(cell(alpha, r, m), args.last), len(args.seeds)) for r in ratios
        ]
        lines.append(f"| {label(m)}{marked(m)} | " + " | ".join(means) + " |")
    return lines


def tuning_section(store: Store, tuned: dict, rows: list[str]) -> list[str]:
    """The protocol, the whole tuning table and the lr each of ``rows`` runs with."""
    p, chosen = tuned["protocol"], tuned["chosen"]
    runs = tuning_runs(p)
    results = {k: load(store, r) for k, r in runs.items()}
    val_fraction = intended(next(iter(runs.values())))["data"]["val_fraction"]
    lines = [
        "",
        "## Tuning",
        "",
        f"Every method gets the same budget: one run per value of {p['key']} in"
        f" {', '.join(f'{lr:g}' for lr in p['lrs'])}, at Dirichlet({p['alpha']:g}),"
        f" {pct(p['label_ratio'])}% labels (FedAvg with 100% labels: all of them), seed"
        f" {p['seed']} (no reported seed), {p['rounds']} rounds, evaluated every"
        f" {p['eval_every']} rounds and in each of the last {p['last']}."
        f" Chosen: {tuned['selection']}."
        f" The validation set is {pct(val_fraction)}% of the training set, class-stratified and"
        " held out of every client. Cells: validation accuracy / test accuracy (shown only to"
        f" compare), each the mean of the last {p['last']} evaluated rounds; **bold**: chosen;"
        " `-`: not run yet.",
        "",
        "| method | " + " | ".join(f"lr {lr:g}" for lr in p["lrs"]) + " |",
        "|---|" + "---|" * len(p["lrs"]),
    ]
    for m in p["methods"]:
        cols = []
        for lr in p["lrs"]:
            x = results[(m, lr)]
            text = "-"
            if x is not None:
                val = val_mean(x, p["last"], runs[(m, lr)].name)
                text = f"{val:.4f} / {last_mean(x, p['last']):.4f}"
            cols.append(f"**{text}**" if chosen.get(m, {}).get("lr") == lr else text)
        lines.append(f"| {label(m)} | " + " | ".join(cols) + " |")
    lines += [
        "",
        "The grid runs with (untuned: no tuned value yet, the method's default lr):",
        "",
        "| method | lr | validation accuracy |",
        "|---|---|---|",
    ]
    for m in rows:
        algo = "fedavg" if m == "reference" else m
        lines.append(
            f"| {label(m)} | {chosen[m]['lr']:g} | {chosen[m]['val_accuracy']:.4f} |"
            if m in chosen
            else f"| {label(m)} | untuned ({ALGORITHMS[algo].params().lr:g}) | - |"
        )
    return [*lines, "", "Produced by:", "", "```bash", tuned["command"], "```"]


def untuned_section(args, methods, settings, now, tuned) -> list[str]:
    """--untuned-archive: the same grid's table from runs made before tuning, and the tuned grid's
    (``now``: its cell function) minus the untuned accuracy per method and setting."""
    old = argparse.Namespace(**{**vars(args), "rounds": args.untuned_rounds or args.rounds})
    grid, _, _ = build_grid(old, methods, settings)
    store = Store(args.untuned_archive, args.untuned_archive, checked=False)
    cell = cell_of({k: load(store, r) for k, r in grid.items()}, args.seeds)
    rows = ([] if args.no_reference else ["reference"]) + methods
    lines = [
        "",
        f"## Before tuning ({old.rounds} rounds, every method at its default lr)",
        "",
        f"The same grid as computed before the tuning above and the validation split (the"
        f" training set without a held-out part): {shown(args.untuned_archive)}/<run>.json.gz."
        f" Mean ± std over seeds of the test accuracy averaged over the last {args.last} rounds.",
    ]
    for alpha in args.alphas:
        ratios = [r for a, r in settings if a == alpha]
        lines += ["", f"### Dirichlet({alpha:g}), untuned", ""]
        lines += accuracy_table(cell, alpha, ratios, rows, args)
    chosen = (tuned or {}).get("chosen", {})
    lines += [
        "",
        "### Tuned minus untuned",
        "",
        "Per method and setting, the tuned grid's accuracy minus the untuned one's, in points, ±"
        ' the standard error of the difference ("above"/"below" beyond twice it). Between the'
        " two the lr changed (column lr: default -> chosen) and the validation split took 5% of"
        " every client's records out of training; FedTriNet's untuned runs are of its form before"
        " the repair (the mean of the heads' losses, no smearing or editing), and the paper"
        " preset had none.",
        "",
        "| method | lr | " + " | ".join(f"Dir({a:g}), {pct(r)}%" for a, r in settings) + " |",
        "|---|---|" + "---|" * len(settings),
    ]
    for m in rows:
        default = ALGORITHMS["fedavg" if m == "reference" else m].params().lr
        lr = f"{default:g} -> {chosen[m]['lr']:g}" if m in chosen else f"{default:g}"
        cols = [
            difference(accuracies(now(a, r, m), args.last), accuracies(cell(a, r, m), args.last))
            for a, r in settings
        ]
        lines.append(f"| {label(m)} | {lr} | " + " | ".join(cols) + " |")
    return lines


def write_report(
    args, store: Store, methods, settings, grid, sweeps, sweep_runs, tuned=None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {k: load(store, r) for k, r in grid.items()}
    sweep_results = {k: load(store, r) for k, r in sweep_runs.items()}
    done = {k: v for k, v in results.items() if v is not None}
    report: Path = args.report
    (report.parent / "figures").mkdir(parents=True, exist_ok=True)
    seeds, last = args.seeds, args.last
    rows = ([] if args.no_reference else ["reference"]) + methods
    cell = cell_of(results, seeds)

    def untuned(m: str) -> str:
        return " (untuned)" if tuned and m not in tuned["chosen"] else ""

    # a run may fill several cells (the sweeps' shared default; a sweep cell that is a grid cell):
    # count it once
    expected = len({r.name for r in [*grid.values(), *sweep_runs.values()]})
    finished = {grid[k].name: v for k, v in done.items()} | {
        sweep_runs[k].name: v for k, v in sweep_results.items() if v is not None
    }
    have = len(finished)
    lines = [
        f"# {args.title}",
        "",
        (
            f"Fashion-MNIST (60k train / 10k test), {EXPERIMENTS[args.experiment]}, {args.rounds}"
            f" rounds, seeds {' '.join(map(str, seeds))},"
        ),
        (
            "in-process engine, one torch thread per run. Each cell is the mean ± std over seeds of"
            " the test accuracy"
        ),
        (
            f"averaged over the last {last} rounds (under Dirichlet(0.1) accuracy swings by several"
            " points from one round"
        ),
        (
            "to the next, so single rounds mislead); `(n=k)` marks a cell with only k seeds so far,"
            " `-` one with none."
        ),
        *(
            [
                "Every method runs with its documented defaults (batch size 32, local steps 10"
                " labeled and 10 unlabeled where a method has them, weak augmentation) except the"
                " lr, tuned per method on a validation set with the same budget for every method"
                " (section Tuning); a method marked untuned runs its default lr. FixMatch and"
                " UDA draw as many unlabeled as labeled samples per step (mu = 1, their papers"
                ' 7) for equal compute; section "At the papers\' settings" runs mu = 7 at one'
                " cell."
            ]
            if tuned
            else [
                (
                    "Every method runs with its documented defaults: the same lr (0.05), batch size"
                    " (32), local steps"
                ),
                (
                    "(10 labeled, 10 unlabeled where a method has them) and weak augmentation for"
                    " all; no per-method tuning."
                ),
                (
                    "The one tuning budget: the lr, picked from 0.025, 0.05 and 0.1 with"
                    " labeled-only FedAvg (Dirichlet(0.1), 5%"
                ),
                (
                    "labels, 60 rounds) and then used by every method; in that test FedLabel alone"
                    " did better early with 0.025"
                ),
                (
                    "([fedlabel-investigation.md](fedlabel-investigation.md)) and keeps 0.05 like"
                    " the others."
                ),
            ]
        ),
        f"Runs completed: {have} of {expected}."
        + (
            " Each run's summary.json (every round's metrics, the config, the"
            f" machine): {shown(store.archive)}/<run>.json.gz."
            if store.archive
            else ""
        ),
        "",
        "Produced by (resumable: rerun the same command to continue or extend):",
        "",
        "```bash",
        command_line(args, methods),
        "```",
        "",
        (
            f"{args.rounds} rounds is a fixed budget, the same for every method; the late-gain"
            " column below says which"
        ),
        "curves were still rising when it ended."
        + (
            " How the rounds were chosen: continued to 1000 rounds, the curves of one setting"
            " flatten after about 700 ([results-1000.md](results-1000.md)); the whole grid that"
            " long would take about three times this grid's tens of CPU-hours, so the grid stops at"
            " 250 and the same runs continued to 500 rounds ([results-500.md](results-500.md):"
            " every method, Dirichlet(0.1), 5%, seed 0) show how the order moves after it: FedLabel"
            " and its local-only ablation gain the most."
            if args.report.resolve() == DEFAULT_REPORT
            else ""
        ),
        "Each run is one command (seed 0 shown; `algorithm=` takes every method's name):",
        "",
        "```bash",
        *sorted(
            {
                shlex.join(
                    [
                        *r.command(args.out)[:-1],
                        f"eval_every={args.eval_every}",
                        f"eval_last={last}",
                    ]
                )
                for k, r in grid.items()
                if k[3] == seeds[0] and k[2] in ("reference", methods[0]) and k[0] == args.alphas[0]
            }
        ),
        "```",
    ]
    for alpha in args.alphas:
        ratios = [r for a, r in settings if a == alpha]
        lines += ["", f"## Dirichlet({alpha:g})", ""]
        lines += accuracy_table(cell, alpha, ratios, rows, args, untuned)
        if all(m in methods for m in ABLATION):
            lines += [
                "",
                (
                    f"Who pseudo-labels (the paper's Table 1), Dirichlet({alpha:g}): accuracy /"
                    " share of unlabeled"
                ),
                (
                    "samples pseudo-labeled / accuracy of those pseudo-labels (last rounds, pooled"
                    " over seeds):"
                ),
                "",
                "| pseudo-labeler | " + " | ".join(f"{pct(r)}% labels" for r in ratios) + " |",
                "|---|" + "---|" * len(ratios),
            ]
            for m in ABLATION:
                cells = [
                    f"{mean_std(accuracies(cell(alpha, r, m), last), len(seeds))} / "
                    f"{pooled(cell(alpha, r, m), 'pseudo_label_coverage', last)} / "
                    f"{pooled(cell(alpha, r, m), 'pseudo_label_accuracy', last)}"
                    for r in ratios
                ]
                lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
        for ratio in ratios:
            if not any(cell(alpha, ratio, m) for m in rows):
                continue
            fig, ax = plt.subplots(figsize=(9, 5))
            colours = plt.get_cmap("tab20").colors
            for i, m in enumerate(rows):
                runs = cell(alpha, ratio, m)
                if not runs:
                    continue
                common = sorted(set.intersection(*(set(t for t, _ in x.evals) for x in runs)))
                acc = {t: statistics.fmean(dict(x.evals)[t] for x in runs) for t in common}
                smooth = [
                    statistics.fmean(a for u, a in acc.items() if t - SMOOTH < u <= t)
                    for t in common
                ]
                ax.plot(
                    common,
                    smooth,
                    label=f"{label(m)} ({len(runs)})",
                    color=colours[(2 * i) % 20 + (2 * i) // 20],
                    linestyle="--" if m == "reference" else "-",
                    linewidth=2 if m == "fedlabel" else 1,
                )
            ax.set(
                xlabel="round",
                ylabel=f"test accuracy (mean over seeds and the last {SMOOTH} rounds)",
                title=f"Fashion-MNIST, Dir({alpha:g}), {pct(ratio)}% labels",
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right", title="method (seeds)", title_fontsize=7)
            fig.tight_layout()
            png = f"figures/{report.stem}_dir{alpha:g}_{pct(ratio)}pct.png"  # one set per report
            fig.savefig(report.parent / png, dpi=100)
            plt.close(fig)
            lines += ["", f"![Dir({alpha:g}), {pct(ratio)}% labels]({png})"]

    if "fedlabel" in methods:
        lines += claims_section(args, settings, cell, label)
    if "fedavg" in methods:
        lines += calibration_section(args, settings, cell, rows)
    if not args.no_paper_cell and any(m in methods for m in PAPER_SETTINGS):
        lines += paper_cell_section(args, cell, methods)
    if tuned:
        lines += tuning_section(store, tuned, rows)
    if args.untuned_archive:
        lines += untuned_section(args, methods, settings, cell, tuned)

    machines = Counter(k for x in finished.values() for k in x.machines())
    whole = Counter(
        next(iter(m)) for x in done.values() if len(m := x.machines()) == 1
    )  # runs computed on one machine
    timing = whole.most_common(1)[0][0] if whole else None
    lines += [
        "",
        "## Wall time and convergence",
        "",
        (
            "Wall s/run: median over the method's completed runs computed wholly on the machine"
            " that computed the most such runs"
        ),
        (
            f"({timing}; `-`: none yet), evaluation included (every {args.eval_every} rounds and"
            f" the last {last});"
        ),
        (
            "s/round: the median round of those runs (a training round; evaluated rounds take"
            " longer). Medians, because a"
        ),
        (
            "run paused part-way (on a shared machine) counts the pause in its wall time. Runs"
            " shared the machine"
        ),
        "with --jobs - 1 others. Late gain: mean accuracy evaluated in the",
        (
            "last 10% of rounds minus that in the 10% before, per setting (mean over seeds), the"
            " largest over settings;"
        ),
        (
            "a curve counts as flattened below 0.01 (the round-to-round swing is 0.03-0.05)."
            " Pseudo-label columns pool"
        ),
        (
            "the last rounds' counters of all runs (coverage: share of unlabeled samples, or drawn"
            " rows for"
        ),
        "FixMatch/UDA, whose pseudo-label was kept).",
        "",
        (
            "| method | runs | wall s/run | s/round | late gain (max over settings) | pseudo-label"
            " coverage | pseudo-label acc. |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    rising = []
    for m in rows:
        rs = [x for (_, _, mm, _), x in done.items() if mm == m]
        if not rs:
            continue
        timed = [
            x for x in rs if x.machines() == {timing}
        ]  # other machines, or runs resumed elsewhere, time differently
        gains = {
            (a, r): statistics.fmean(late_gain(x) for x in cell(a, r, m))
            for a, r in settings
            if cell(a, r, m)
        }
        rising += [
            f"{label(m)} at Dir({a:g}), {pct(r)}%" for (a, r), g in gains.items() if g >= 0.01
        ]
        wall = "- | -"
        if timed:
            per_round = statistics.median(
                statistics.median(r["seconds"] for r in x.rounds) for x in timed
            )
            wall = f"{statistics.median(x.wall for x in timed):.0f} | {per_round:.2f}"
        lines.append(
            f"| {label(m)} | {len(rs)} | {wall} | {max(gains.values()):+.4f} |"
            f" {pooled(rs, 'pseudo_label_coverage', last)} |"
            f" {pooled(rs, 'pseudo_label_accuracy', last)} |"
        )
    lines += [
        "",
        "Not flattened yet (late gain >= 0.01): " + ("; ".join(rising) if rising else "none") + ".",
    ]

    if sweeps:
        alpha_s, ratio_s = args.sweep_setting
        rounds_s = args.sweep_rounds or args.rounds
        lines += [
            "",
            (
                f"## FedLabel sensitivity (Dirichlet({alpha_s:g}), {pct(ratio_s)}% labels,"
                f" {rounds_s} rounds, seeds {' '.join(map(str, args.sweep_seeds))})"
            ),
            "",
            (
                "One value changed at a time from the defaults (beta 0.5, lambda0 1, tau = tau' ="
                " 10); tau sets"
            ),
            f"both local_steps and unlabeled_steps. Accuracy: mean of the last {last} rounds.",
            "",
        ]
        for key, values in sweeps.items():
            accs = [
                mean_std(
                    [
                        last_mean(x, last)
                        for s in args.sweep_seeds
                        if (x := sweep_results[(key, v, s)])
                    ],
                    len(args.sweep_seeds),
                )
                for v in values
            ]
            lines += [
                f"| {key} | " + " | ".join(f"{v:g}" for v in values) + " |",
                "|---|" + "---|" * len(values),
                "| accuracy | " + " | ".join(accs) + " |",
                "",
            ]

    if machines:
        lines += [
            "",
            "## Where the runs were computed",
            "",
            (
                "Runs are bitwise reproducible on the same machine and software; on another CPU or"
                " torch"
            ),
            (
                "version float sums differ and a run drifts within the seeds' spread. A resumed run"
                " counts"
            ),
            (
                "once for each machine that computed part of it. engine=vectorized (on a GPU)"
                " trains a round's"
            ),
            (
                "clients in one batched computation: the same algorithm, with per-client random"
                " streams and"
            ),
            (
                "other float sums, so its runs are other draws of the same experiment"
                " (docs/performance.md)."
            ),
            "",
            "| machine | runs |",
            "|---|---|",
            *[f"| {k} | {n} |" for k, n in machines.most_common()],
        ]
    lines += [
        "",
        (
            "What FedLabel's runs on this data show, run by run:"
            " [fedlabel-investigation.md](fedlabel-investigation.md)."
        ),
    ]
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())


if __name__ == "__main__":
    main()
