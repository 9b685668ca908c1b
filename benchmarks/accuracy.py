"""The accuracy benchmark: the shape of the FedLabel paper's Tables 3, 4 and 1 on Fashion-MNIST.

Every registered algorithm (fedlabel.algorithms.ALGORITHMS, so methods added later appear by
themselves) at each Dirichlet alpha and label ratio, for each seed, plus FedAvg with 100% labels
as the reference, on the in-process engine with one torch thread per run (--jobs runs at a time),
then FedLabel's sensitivity to beta, lambda0 and tau (local_steps = unlabeled_steps) in small
sweeps. Each run is one `fedlabel simulate experiment=fmnist_cross_device ...` command (100
clients, 10 per round, GroupNorm CNN); a run whose summary.json says completed with the same
config is not run again, so an interrupted benchmark resumes. Writes the report (default
docs/results.md) with mean ± std over seeds per cell, the commands, rounds, wall time per method,
one PNG of accuracy against round per setting, and the sweeps.

    python benchmarks/accuracy.py --jobs 2                      # the full grid (many CPU-hours)
    python benchmarks/accuracy.py --alphas 0.1 --label-ratios 0.05 --methods fedavg fedlabel \\
        --seeds 0 --rounds 5 --no-sweeps --report outputs/bench/tiny/results.md \\
        --extra data.num_clients=10 clients_per_round=3 data.train_samples=3000   # a quick try
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlabel.algorithms import ALGORITHMS  # noqa: E402

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
}
REFERENCE = "FedAvg, 100% labels"
ABLATION = ["fedlabel_local_only", "fedlabel_global_only", "fedlabel"]
SWEEP_KEYS = {"beta": ["algorithm.beta"], "lambda0": ["algorithm.lambda0"],
              "tau": ["algorithm.local_steps", "algorithm.unlabeled_steps"]}  # fmt: skip


@dataclass(frozen=True)
class Run:
    name: str  # run directory name under --out
    overrides: tuple[str, ...]

    def command(self, out: Path) -> list[str]:
        return ["fedlabel", "simulate", "experiment=fmnist_cross_device", *self.overrides, f"output_dir={out / self.name}"]


@dataclass
class Result:
    curve: list[float]
    wall: float
    rounds: list[dict] = field(repr=False)
    config: dict = field(repr=False, default_factory=dict)


def pct(ratio: float) -> str:
    return f"{ratio * 100:g}"


def grid_run(algo: str, alpha: float, ratio: float, seed: int, rounds: int, extra: list[str], *, tag: str = "", more=()) -> Run:
    overrides = (f"algorithm={algo}", f"data.alpha={alpha:g}", f"data.label_ratio={ratio:g}", f"rounds={rounds}",
                 f"seed={seed}", *more, *extra)  # fmt: skip
    return Run(f"a{alpha:g}_{algo}_{pct(ratio)}{tag}_s{seed}", overrides)


def completed(run: Run, out: Path) -> bool:
    """A finished run with the same algorithm, seed and rounds (everything else is in its name)."""
    path = out / run.name / "summary.json"
    if not path.exists():
        return False
    s = json.loads(path.read_text())
    want = dict(o.split("=", 1) for o in run.overrides)
    cfg = s["config"]
    return (s["status"] == "completed" and cfg["algorithm"]["name"] == want["algorithm"]
            and cfg["rounds"] == int(want["rounds"]) and cfg["seed"] == int(want["seed"]))  # fmt: skip


def execute(run: Run, out: Path) -> None:
    cmd = run.command(out)
    cmd[0] = str(Path(sys.executable).parent / "fedlabel")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    print(f"done: {run.name}", flush=True)


def load(run: Run, out: Path) -> Result:
    s = json.loads((out / run.name / "summary.json").read_text())
    return Result([r["accuracy"] for r in s["rounds"] if r["accuracy"] is not None], s["wall_seconds"], s["rounds"], s["config"])


def last_mean(r: Result, last: int) -> float:
    return statistics.fmean(r.curve[-last:])


def late_gain(r: Result) -> float:
    """Mean accuracy of the last 10% of evaluations minus that of the 10% before: ~0 once flat."""
    w = max(1, len(r.curve) // 10)
    if len(r.curve) < 2 * w:
        return float("nan")
    return statistics.fmean(r.curve[-w:]) - statistics.fmean(r.curve[-2 * w : -w])


def mean_std(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=250)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--label-ratios", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    ap.add_argument("--methods", nargs="+", default=None, help="registered names (default: all)")
    ap.add_argument("--last", type=int, default=10, help="report the mean accuracy of the last N evaluations")
    ap.add_argument("--sweep", nargs="*", default=["beta=0.3,0.5,0.7,0.9", "lambda0=0,0.5,1,2", "tau=5,10,20"],
                    help="FedLabel sensitivity sweeps, KEY=v1,v2 with KEY in beta, lambda0, tau")  # fmt: skip
    ap.add_argument("--no-sweeps", action="store_true")
    ap.add_argument("--sweep-setting", type=float, nargs=2, default=[0.1, 0.05], metavar=("ALPHA", "RATIO"))
    ap.add_argument("--sweep-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--engine-rounds", type=int, default=0,
                    help="also run FedLabel on both engines for this many rounds (default threads) and compare")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "accuracy")
    ap.add_argument("--report", type=Path, default=ROOT / "docs" / "results.md")
    ap.add_argument("--extra", nargs="*", default=[], help="extra overrides for every run")
    args = ap.parse_args()

    known = [m for m in LABELS if m in ALGORITHMS] + [m for m in ALGORITHMS if m not in LABELS]
    methods = args.methods or known
    unknown = sorted(set(methods) - set(ALGORITHMS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; registered: {sorted(ALGORITHMS)}")
    methods = [m for m in known if m in methods]
    settings = [(a, r) for a in args.alphas for r in args.label_ratios]

    grid: dict[tuple, Run] = {}
    for alpha in args.alphas:
        for seed in args.seeds:
            grid[(alpha, None, "reference", seed)] = grid_run("fedavg", alpha, 1.0, seed, args.rounds, args.extra)
    for alpha, ratio in settings:
        for m in methods:
            for seed in args.seeds:
                grid[(alpha, ratio, m, seed)] = grid_run(m, alpha, ratio, seed, args.rounds, args.extra)
    sweeps = {} if args.no_sweeps or "fedlabel" not in ALGORITHMS else parse_sweeps(args.sweep)
    sweep_runs: dict[tuple, Run] = {}
    alpha_s, ratio_s = args.sweep_setting
    defaults = ALGORITHMS["fedlabel"].Params()
    for key, values in sweeps.items():
        for v in values:
            for seed in args.sweep_seeds:
                default = getattr(defaults, SWEEP_KEYS[key][0].split(".")[1])
                if v == default:  # the grid's own run
                    run = grid_run("fedlabel", alpha_s, ratio_s, seed, args.rounds, args.extra)
                else:
                    value = f"{int(v)}" if key == "tau" else f"{v:g}"
                    run = grid_run("fedlabel", alpha_s, ratio_s, seed, args.rounds, args.extra, tag=f"_{key}{value}",
                                   more=[f"{k}={value}" for k in SWEEP_KEYS[key]])  # fmt: skip
                sweep_runs[(key, v, seed)] = run
    engine_runs = {}
    if args.engine_rounds:
        base = ("algorithm=fedlabel", f"data.label_ratio={args.label_ratios[0]:g}", f"rounds={args.engine_rounds}",
                f"seed={args.seeds[0]}", *args.extra)  # fmt: skip
        engine_runs = {e: Run(f"engine_{e}", (*base, f"engine={e}")) for e in ("flower", "inprocess")}

    todo = {r.name: r for r in [*grid.values(), *sweep_runs.values()] if not completed(r, args.out)}
    print(f"{len(todo)} of {len(set(r.name for r in [*grid.values(), *sweep_runs.values()]))} runs to do", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda r: execute(r, args.out), todo.values()))
    for run in engine_runs.values():  # one at a time, each with its engine's default threads
        if not completed(run, args.out):
            cmd = run.command(args.out)
            cmd[0] = str(Path(sys.executable).parent / "fedlabel")
            subprocess.run(cmd, check=True, capture_output=True)
    results = {k: load(r, args.out) for k, r in grid.items()}
    sweep_results = {k: load(r, args.out) for k, r in sweep_runs.items()}
    write_report(args, methods, settings, grid, results, sweeps, sweep_runs, sweep_results, engine_runs)


def write_report(args, methods, settings, grid, results, sweeps, sweep_runs, sweep_results, engine_runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report: Path = args.report
    (report.parent / "figures").mkdir(parents=True, exist_ok=True)
    seeds, last = args.seeds, args.last
    label = lambda m: REFERENCE if m == "reference" else LABELS.get(m, m)  # noqa: E731
    rows = ["reference", *methods]
    cell = lambda alpha, ratio, m: [results[(alpha, None if m == "reference" else ratio, m, s)] for s in seeds]  # noqa: E731
    extra = f" --extra {' '.join(args.extra)}" if args.extra else ""
    sweep_args = f" --sweep {' '.join(args.sweep)} --sweep-seeds {' '.join(map(str, args.sweep_seeds))}" if sweeps else " --no-sweeps"
    cfg = next(iter(results.values())).config
    train = f"{cfg['data']['train_samples']} of 60k" if cfg["data"]["train_samples"] else "60k"
    lines = [
        "# Results", "",
        f"Fashion-MNIST ({train} train / 10k test), {cfg['data']['num_clients']} clients, {cfg['clients_per_round']} per round, "
        f"{cfg['model']['name']} (GroupNorm), {args.rounds} rounds, seeds",
        f"{' '.join(map(str, seeds))}, in-process engine, CPU, one torch thread per run. Each cell is the mean ± std over",
        f"seeds of the test accuracy averaged over the last {last} rounds (under Dirichlet(0.1) accuracy swings by",
        "several points from round to round, so single rounds mislead). Every method runs with its",
        "documented defaults (the same lr, batch size, local steps and augmentations for all; no per-method",
        "tuning). Produced by:", "",
        "```bash",
        f"python benchmarks/accuracy.py --rounds {args.rounds} --seeds {' '.join(map(str, seeds))} "
        f"--alphas {' '.join(f'{a:g}' for a in args.alphas)} --label-ratios {' '.join(f'{r:g}' for r in args.label_ratios)} "
        f"--methods {' '.join(methods)} --jobs {args.jobs}"
        + sweep_args + (f" --engine-rounds {args.engine_rounds}" if args.engine_rounds else "") + extra,
        "```", "",
        "The full benchmark is `python benchmarks/accuracy.py --jobs N`: every registered method, Dirichlet",
        "0.1 and 1.0, 1%, 5% and 20% labels, seeds 0 1 2, 250 rounds, and the sweeps (about 200 runs of 15-30",
        "CPU-minutes each). 250 rounds because in 300-round runs at 5% labels the 10-round mean accuracy of",
        "FedAvg and FedLabel rose by less than a point after round ~220 (fedlabel-investigation.md); the",
        "late-gain column below checks this for every method and setting.", "",
        "Each run is one command (seed 0 shown; `algorithm=` takes every method's name):", "",
        "```bash",
        *sorted({shlex.join(r.command(Path("outputs/bench/accuracy"))[:-1]) for k, r in grid.items()
                 if k[3] == seeds[0] and k[2] in ("reference", methods[0])}),  # fmt: skip
        "```",
    ]  # fmt: skip
    for alpha in args.alphas:
        ratios = [r for a, r in settings if a == alpha]
        lines += ["", f"## Dirichlet({alpha:g})", "",
                  "| method | " + " | ".join(f"{pct(r)}% labels" for r in ratios) + " |",
                  "|---|" + "---|" * len(ratios)]  # fmt: skip
        for m in rows:
            cells = [mean_std([last_mean(x, last) for x in cell(alpha, r, m)]) for r in ratios]
            lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
        if all(m in methods for m in ABLATION):
            lines += ["", f"Who pseudo-labels (the paper's Table 1), Dirichlet({alpha:g}):", "",
                      "| pseudo-labeler | " + " | ".join(f"{pct(r)}%: acc. / pseudo-label cov. / pseudo-label acc." for r in ratios) + " |",
                      "|---|" + "---|" * len(ratios)]  # fmt: skip
            for m in ABLATION:
                cells = [f"{mean_std([last_mean(x, last) for x in cell(alpha, r, m)])} / "
                         f"{pooled(cell(alpha, r, m), 'pseudo_label_coverage', last)} / "
                         f"{pooled(cell(alpha, r, m), 'pseudo_label_accuracy', last)}" for r in ratios]  # fmt: skip
                lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
        for ratio in ratios:
            fig, ax = plt.subplots(figsize=(8, 4.5))
            for m in rows:
                curves = [x.curve for x in cell(alpha, ratio, m)]
                n = min(map(len, curves))
                ax.plot(range(1, n + 1), [statistics.fmean(c[i] for c in curves) for i in range(n)], label=label(m),
                        linestyle="--" if m == "reference" else "-", linewidth=1)  # fmt: skip
            ax.set(xlabel="round", ylabel=f"test accuracy (mean of {len(seeds)} seeds)",
                   title=f"Fashion-MNIST, Dir({alpha:g}), {pct(ratio)}% labels")  # fmt: skip
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
            fig.tight_layout()
            png = f"figures/accuracy_dir{alpha:g}_{pct(ratio)}pct.png"
            fig.savefig(report.parent / png, dpi=100)
            plt.close(fig)
            lines += ["", f"![Dir({alpha:g}), {pct(ratio)}% labels]({png})"]

    lines += ["", "## Wall time and convergence", "",
              "Wall s/run: mean over every run of the method (runs shared the cores with --jobs - 1 others, so",
              "this compares methods only roughly). Late gain: mean accuracy of the last 10% of rounds minus that",
              "of the 10% before, averaged over runs; a curve counts as flattened when it is below 0.01 (the",
              "round-to-round swing is 0.03-0.05). Pseudo-label columns pool the last rounds' counters of all runs",
              "(coverage: share of unlabeled samples, or drawn rows for FixMatch/UDA, whose pseudo-label was kept).", "",
              "| method | wall s/run | s/round | late gain (max over settings) | pseudo-label coverage | pseudo-label acc. |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    rising = []
    for m in rows:
        rs = [x for (a, r, mm, s), x in results.items() if mm == m]
        gains = [statistics.fmean([late_gain(x) for x in cell(a, r, m)]) for a, r in settings]
        rising += [f"{label(m)} at Dir({a:g}), {pct(r)}%" for (a, r), g in zip(settings, gains) if g >= 0.01]
        lines.append(f"| {label(m)} | {statistics.fmean(x.wall for x in rs):.0f} | "
                     f"{statistics.fmean(x.wall / len(x.rounds) for x in rs):.2f} | {max(gains):+.4f} | "
                     f"{pooled(rs, 'pseudo_label_coverage', last)} | {pooled(rs, 'pseudo_label_accuracy', last)} |")  # fmt: skip
    lines += ["", "Not flattened yet (late gain >= 0.01): " + ("; ".join(rising) if rising else "none") + "."]

    if sweeps:
        alpha_s, ratio_s = args.sweep_setting
        lines += ["", f"## FedLabel sensitivity (Dirichlet({alpha_s:g}), {pct(ratio_s)}% labels, seeds "
                  f"{' '.join(map(str, args.sweep_seeds))})", "",
                  "One value changed at a time from the defaults (beta 0.5, lambda0 1, tau = tau' = 10); tau sets",
                  "both local_steps and unlabeled_steps.", ""]  # fmt: skip
        for key, values in sweeps.items():
            lines += [f"| {key} | " + " | ".join(f"{v:g}" for v in values) + " |", "|---|" + "---|" * len(values),
                      "| accuracy | " + " | ".join(mean_std([last_mean(sweep_results[(key, v, s)], last) for s in args.sweep_seeds])
                                                  for v in values) + " |", ""]  # fmt: skip
    if engine_runs:
        lines += engine_section(args, engine_runs, results)
    lines += ["", "What FedLabel's runs on this data show, run by run: [fedlabel-investigation.md](fedlabel-investigation.md)."]
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())


def engine_section(args, engine_runs: dict[str, Run], results) -> list[str]:
    r = {e: load(run, args.out) for e, run in engine_runs.items()}
    ends = {}
    for e in r:
        path = args.out / engine_runs[e].name
        first = path / "flower" / "run_config.toml" if e == "flower" else path / "clients.json"
        ends[e] = (path / "summary.json").stat().st_mtime - first.stat().st_mtime
    lines = ["", "## Same FedLabel run on both engines", "",
             "Run one after the other on an otherwise idle machine, each with its default threads (Flower: one",
             "Ray worker per CPU, 1 thread each; in-process: one process, all torch threads). Rounds wall s: the",
             "server loop's own time; end to end: the whole command, SuperLink and Ray start-up included.", "",
             "| engine | acc. (mean of last 10) | s per round | rounds wall s | end to end s | command |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for e, x in r.items():
        cmd = shlex.join(engine_runs[e].command(Path("out"))[:-1])
        lines.append(f"| {e} | {last_mean(x, 10):.4f} | {x.wall / len(x.rounds):.2f} | {x.wall:.0f} | {ends[e]:.0f} | `{cmd}` |")
    table = results.get((args.alphas[0], args.label_ratios[0], "fedlabel", args.seeds[0]))
    if table is not None and len(table.curve) == len(r["flower"].curve):
        same = sum(a == b for a, b in zip(r["flower"].curve, table.curve))
        lines += ["", "Reproducibility across engines: the Flower run's test accuracy equals, bit for bit, that of the",
                  f"grid's in-process run with the same seed and one torch thread in {same} of {len(table.curve)} rounds",
                  "(the in-process engine run above used several threads, which sums inside convolutions in another",
                  "order, so it drifts apart after a few rounds)."]  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
