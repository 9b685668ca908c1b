"""Throughput of the simulation engines against a plain training loop (the compute floor).

    python benchmarks/throughput.py       # workloads a,b; engines that run here
    python benchmarks/throughput.py --workloads a --engines floor,inprocess,flower --rounds 4
    python benchmarks/throughput.py --workloads a,b,c --device cuda \
        --engines floor,inprocess,vectorized
    python benchmarks/throughput.py ... --doc docs/performance.md   # a section for this device

Workloads (FedAvg on Fashion-MNIST, every sample labeled, weak shift augmentation):
  a  the paper's cross-device shape: 100 clients, Dirichlet(0.1), 10 per round, small CNN,
     10 SGD steps of batch 32
  b  pfl-research's cross-device benchmark shape: 1000 clients x 50 samples (IID), cohort 50,
     batch 10, one local epoch (5 steps)
  c  cross-silo: 10 clients (IID), all 10 per round, ResNet-18 (GroupNorm), 10 steps of batch 32
Engines: floor (the same SGD steps and weighted average with a plain nn.Module loop, nothing
else), inprocess, inprocess-wN (engine.workers=N), vectorized, flower (one Ray worker per core).

Each (workload, engine) runs in a fresh subprocess. Rounds 2..R-1 are timed: round 1 pays start-up
(Ray, data loading, kernel selection) and round R evaluates on the test set. FLOPs are counted by
torch.utils.flop_counter (convolutions and matrix products of forward and backward; norms and
element-wise ops are not counted) per trained sample, times the samples of the timed rounds.
The device's peak is a measured float32 matrix product (and the nominal figure for known GPUs).
Peak memory is the largest resident set of the run's process tree (sampled every 0.2 s) and, on
CUDA, torch's peak allocation in the benchmark process. For the in-process engines and the floor
the table also gives CPU seconds of the process tree per update and "cores used" (CPU seconds per
wall second): on a shared machine a run that got less than its cores shows it there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOADS = {
    "a": {
        "data": {"num_clients": 100, "partition": "dirichlet", "alpha": 0.1, "label_ratio": 1.0},
        "clients_per_round": 10,
        "model": {"name": "cnn"},
        "algorithm": {"batch_size": 32, "local_steps": 10},
    },
    "b": {
        "data": {
            "num_clients": 1000,
            "partition": "iid",
            "train_samples": 50000,
            "label_ratio": 1.0,
        },
        "clients_per_round": 50,
        "model": {"name": "cnn"},
        "algorithm": {"batch_size": 10, "local_steps": 5},
    },
    "c": {
        "data": {"num_clients": 10, "partition": "iid", "label_ratio": 1.0},
        "clients_per_round": 10,
        "model": {"name": "resnet18"},
        "algorithm": {"batch_size": 32, "local_steps": 10},
    },
}
DESCRIPTION = {
    "a": "100 clients, 10/round, CNN, 10 x batch 32",
    "b": "1000 clients, 50/round, CNN, 5 x batch 10",
    "c": "10 clients, 10/round, ResNet-18, 10 x batch 32",
}
NOMINAL_FP32_TFLOPS = {
    "H100 80GB HBM3": 66.9,
    "H100 PCIe": 51.2,
    "H200": 66.9,
    "A100": 19.5,
    "L4": 30.3,
}


def workload_values(
    name: str, engine: str, *, rounds: int, device: str, data_root: str, out: str
) -> dict:
    """The nested config of a workload on an engine (the same dict the CLI builds)."""
    from fedlabel.config import Config, config_to_dict

    values = config_to_dict(Config())
    w = WORKLOADS[name]
    values["algorithm"] = {"name": "fedavg", **w["algorithm"]}
    values["data"].update(w["data"], root=data_root, download=False)
    values["model"].update(w["model"])
    values.update(
        clients_per_round=w["clients_per_round"],
        rounds=rounds,
        eval_every=rounds,
        device=device,
        output_dir=out,
    )
    values["engine"]["name"] = (
        "inprocess" if engine == "floor" or engine.startswith("inprocess-w") else engine
    )
    if engine.startswith("inprocess-w"):
        values["engine"]["workers"] = int(engine[len("inprocess-w") :])
    if engine == "flower":
        values["engine"]["num_gpus_per_client"] = 0.1 if device.startswith("cuda") else 0.0
    return values


# ---------------------------------------------------------------------------------------------
# one run (in its own process)


def _stats() -> dict[int, list[str]]:
    """/proc/<pid>/stat fields after the command name (state, ppid, ...) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                pass
    return out


def _tree(stats: dict[int, list[str]]) -> set[int]:
    """This process and its descendants."""
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, f in stats.items() if int(f[1]) == parent and p not in tree]
        tree.update(kids)
        frontier += kids
    return tree


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its live descendants."""
    stats = _stats()
    ticks = sum(int(stats[p][11]) + int(stats[p][12]) for p in _tree(stats) if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """Largest summed resident set of this process and its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.2) -> None:
        self.peak, self._every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            total = 0
            for pid in _tree(_stats()):
                try:
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                except (OSError, IndexError, ValueError):
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self._every)


@contextlib.contextmanager
def _cpu_marks():
    """CPU time of the process tree (workers included) at the end of every round the
    in-process server loop records."""
    from fedlabel.report import RunRecorder

    marks: list[float] = []
    log_round = RunRecorder.log_round

    def marked(self, record):
        marks.append(tree_cpu_seconds())
        return log_round(self, record)

    RunRecorder.log_round = marked
    try:
        yield marks
    finally:
        RunRecorder.log_round = log_round


def floor_rounds(cfg, fed, device, on_round=lambda t: None) -> list[float]:
    """The workload's SGD steps and weighted average with a plain nn.Module and torch.optim.SGD:
    no per-client generators, metrics, records or evaluation. Seconds per round."""
    import torch
    import torch.nn.functional as F

    from fedlabel.augment import weak_augment
    from fedlabel.federation import initial_model, sample_cohort
    from fedlabel.training import to_float

    p = cfg.algorithm
    model, _ = initial_model(
        cfg, in_channels=fed.in_channels, num_classes=fed.num_classes, image_size=fed.image_size
    )
    model.to(device)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(cfg.seed)
    seconds = []
    for rnd in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        cohort = sample_cohort(
            seed=cfg.seed,
            round=rnd,
            num_clients=cfg.data.num_clients,
            clients_per_round=cfg.clients_per_round,
        )
        weights = {c: fed.clients[c].num_labeled for c in cohort}
        total = sum(weights.values())
        step = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for cid in cohort:
            data = fed.clients[cid]
            x, y = data.labeled_images.to(device), data.labeled_labels.to(device)
            n = len(y)
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(
                model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
            )
            for _ in range(p.local_steps if n else 0):
                idx = torch.randperm(n, generator=gen)[: min(p.batch_size, n)].to(device)
                xb = (
                    weak_augment(to_float(x[idx]), generator=gen, max_shift=p.weak_shift)
                    if p.weak_shift
                    else to_float(x[idx])
                )
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    step[k].add_(v - global_state[k], alpha=weights[cid] / total)
        global_state = {k: global_state[k] + step[k] for k in global_state}
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        on_round(tree_cpu_seconds())
    return seconds


def flops_per_sample(cfg, fed, device) -> float:
    """Forward + backward FLOPs of one training sample (convolutions and matrix products)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from fedlabel.models import build_model

    model = build_model(
        cfg.model.name,
        in_channels=fed.in_channels,
        num_classes=fed.num_classes,
        image_size=fed.image_size,
        activation=cfg.model.activation,
    ).to(device)
    b = 8
    x = torch.rand(b, fed.in_channels, fed.image_size, fed.image_size, device=device)
    y = torch.zeros(b, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / b


def run_single(args) -> dict:
    import torch

    import fedlabel
    from fedlabel.config import config_from_dict
    from fedlabel.federation import load_federated, sample_cohort
    from fedlabel.training import resolve_device

    with tempfile.TemporaryDirectory(prefix="fedlabel-bench-") as tmp:
        values = workload_values(
            args.single[0],
            args.single[1],
            rounds=args.rounds,
            device=args.device,
            data_root=args.data_root,
            out=str(Path(tmp) / "run"),
        )
        cfg = config_from_dict(values)
        device = resolve_device(cfg.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with PeakRss() as rss, _cpu_marks() as cpu:
            if args.single[1] == "floor":
                fed = load_federated(cfg)
                seconds = floor_rounds(cfg, fed, device, on_round=cpu.append)
            else:
                summary = fedlabel.run(values, progress=False)
                seconds = [r["seconds"] for r in summary["rounds"]]
                fed = None
        fed = fed or load_federated(cfg)
    p = cfg.algorithm
    timed = list(range(2, cfg.rounds)) if cfg.rounds >= 3 else [cfg.rounds]
    updates = samples = 0
    for rnd in timed:
        for cid in sample_cohort(
            seed=cfg.seed,
            round=rnd,
            num_clients=cfg.data.num_clients,
            clients_per_round=cfg.clients_per_round,
        ):
            n = fed.clients[cid].num_labeled
            updates += 1
            samples += p.local_steps * min(p.batch_size, n) if n else 0
    secs = sum(seconds[r - 1] for r in timed)
    # CPU seconds of the process tree over the timed rounds (in-process engines and floor only):
    # steadier than wall time on a shared machine
    cpu_secs = (
        cpu[timed[-1] - 1] - cpu[timed[0] - 2] if len(cpu) == cfg.rounds and timed[0] >= 2 else None
    )
    return {
        "workload": args.single[0],
        "engine": args.single[1],
        "rounds_timed": len(timed),
        "seconds": secs,
        "cpu_seconds": cpu_secs,
        "updates": updates,
        "samples": samples,
        "flops": samples * flops_per_sample(cfg, fed, device),
        "peak_rss_bytes": rss.peak,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "first_round_seconds": seconds[0],
    }


# ---------------------------------------------------------------------------------------------
# the device


def device_info(device: str) -> dict:
    """Name, thread count, measured float32 matrix-product FLOP/s and nominal peak if known."""
    import torch

    dev = torch.device(device)
    n = 4096 if dev.type == "cuda" else 1024
    a, b = torch.rand(n, n, device=dev), torch.rand(n, n, device=dev)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        a @ b
        reps += 1
        if dev.type == "cuda":
            torch.cuda.synchronize()
    measured = 2 * n**3 * reps / (time.perf_counter() - start)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        nominal = next((v * 1e12 for k, v in NOMINAL_FP32_TFLOPS.items() if k in name), None)
    else:
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        name, nominal = f"CPU {model}, {os.cpu_count()} cores", None
    return {
        "name": name,
        "device": device,
        "threads": torch.get_num_threads(),
        "matmul_fp32_flops": measured,
        "nominal_fp32_flops": nominal,
        "torch": torch.__version__,
        "load_average": os.getloadavg()[0],
    }


# ---------------------------------------------------------------------------------------------
# the whole benchmark


def default_engines(device: str) -> list[str]:
    import importlib.util

    engines = ["floor", "inprocess"]
    if device.startswith("cuda"):
        engines.append("vectorized")
    elif (os.cpu_count() or 1) > 1:
        engines.append(f"inprocess-w{os.cpu_count()}")
    if importlib.util.find_spec("flwr") is not None:
        engines.append("flower")
    return engines


def run_all(args) -> list[dict]:
    results = []
    deadline = time.monotonic() + (args.budget_s or float("inf"))
    for w in args.workloads:
        for engine in args.engines:
            left = deadline - time.monotonic()
            if left < 10:
                results.append(
                    {
                        "workload": w,
                        "engine": engine,
                        "error": f"not run: --budget-s {args.budget_s:.0f} s spent",
                    }
                )
                continue
            cmd = [
                sys.executable,
                __file__,
                "--single",
                w,
                engine,
                "--rounds",
                str(args.rounds),
                "--device",
                args.device,
                "--data-root",
                args.data_root,
            ]
            print(f"[{w}/{engine}] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
            limit = min(args.timeout_s, left)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT)
            except subprocess.TimeoutExpired:
                results.append(
                    {"workload": w, "engine": engine, "error": f"timed out after {limit:.0f} s"}
                )
                continue
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                results.append(
                    {
                        "workload": w,
                        "engine": engine,
                        "error": f"exit {proc.returncode}: {' | '.join(tail)}",
                    }
                )
            else:
                results.append(json.loads(lines[-1]))
            print(f"[{w}/{engine}] {results[-1]}", file=sys.stderr, flush=True)
    return results


def table(results: list[dict], info: dict) -> str:
    peak = info["matmul_fp32_flops"]
    rows = [
        (
            "| workload | engine | client updates/s | samples/s | GFLOP/s | % of matmul peak | peak"
            " memory | time / floor | speed-up vs flower | CPU s / update (/ floor) | cores used |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["workload"], r["engine"]): r for r in results}
    for r in results:
        w, e = r["workload"], r["engine"]
        if "error" in r:
            rows.append(f"| {w} | {e} | {r['error']} | | | | | | | | |")
            continue
        rate = lambda x, r=r: x / r["seconds"]  # noqa: E731
        floor, flower = by.get((w, "floor")), by.get((w, "flower"))
        ratio_floor = (
            f"{r['seconds'] / floor['seconds']:.2f}x" if floor and "error" not in floor else "n/a"
        )
        vs_flower = (
            f"{flower['seconds'] / r['seconds']:.2f}x"
            if flower and "error" not in flower
            else "n/a"
        )
        mem = f"{r['peak_rss_bytes'] / 2**30:.2f} GiB RSS"
        if r.get("peak_cuda_bytes"):
            mem += f", {r['peak_cuda_bytes'] / 2**30:.2f} GiB CUDA"
        # CPU seconds per wall second over the timed rounds: below the cores a run may use, the
        # machine's other load took the rest (wall-clock rates are then not comparable)
        used = f"{r['cpu_seconds'] / r['seconds']:.2f}" if r.get("cpu_seconds") else "n/a"
        cpu = "n/a"
        if r.get("cpu_seconds"):
            cpu = f"{r['cpu_seconds'] / r['updates']:.3f}"
            if floor and floor.get("cpu_seconds"):
                cpu += f" ({r['cpu_seconds'] / floor['cpu_seconds']:.2f}x)"
        rows.append(
            f"| {w} | {e} | {rate(r['updates']):.1f} | {rate(r['samples']):.0f} |"
            f" {rate(r['flops']) / 1e9:.1f} | {100 * rate(r['flops']) / peak:.1f}% | {mem} |"
            f" {ratio_floor} | {vs_flower} | {cpu} | {used} |"
        )
    return "\n".join(rows)


def section(results: list[dict], info: dict, argv: list[str]) -> str:
    nominal = (
        f", nominal float32 {info['nominal_fp32_flops'] / 1e12:.1f} TFLOP/s"
        if info["nominal_fp32_flops"]
        else ""
    )
    timed = sorted({r["rounds_timed"] for r in results if "rounds_timed" in r})
    lines = [
        f"### {info['name']} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        (
            f"`python benchmarks/throughput.py {' '.join(argv)}`; torch {info['torch']},"
            f" {info['threads']} threads, measured float32 matmul"
            f" {info['matmul_fp32_flops'] / 1e9:.0f} GFLOP/s{nominal}; load average at start"
            f" {info['load_average']:.1f}; {'/'.join(map(str, timed))} timed rounds per run."
        ),
        "",
        "Workloads: "
        + "; ".join(f"({w}) {DESCRIPTION[w]}" for w in sorted({r["workload"] for r in results}))
        + ".",
        "",
        table(results, info),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workloads", default="a,b", help="comma-separated from a,b,c (default a,b)")
    ap.add_argument(
        "--engines",
        default="",
        help=(
            "comma-separated from floor,inprocess,inprocess-wN,vectorized,flower (default: what"
            " runs here)"
        ),
    )
    ap.add_argument(
        "--rounds", type=int, default=4, help="rounds per run; rounds 2..R-1 are timed (default 4)"
    )
    ap.add_argument("--device", default="", help="cpu or cuda (default: cuda if available)")
    ap.add_argument(
        "--data-root",
        default="",
        help="directory with the four Fashion-MNIST .gz files (default: search)",
    )
    ap.add_argument(
        "--timeout-s", type=float, default=1800, help="limit per (workload, engine) run"
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=0,
        help="start no run after this many seconds (0 = no limit)",
    )
    ap.add_argument(
        "--doc", default="", help="append a section with the results to this markdown file"
    )
    ap.add_argument("--json", default="", help="write the raw results here")
    ap.add_argument("--single", nargs=2, metavar=("WORKLOAD", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.single:
        print(json.dumps(run_single(args)), flush=True)
        return 0
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.engines = [e for e in args.engines.split(",") if e] or default_engines(args.device)
    known = ("floor", "inprocess", "vectorized", "flower")
    bad = [w for w in args.workloads if w not in WORKLOADS] + [
        e
        for e in args.engines
        if e not in known
        and not (e.startswith("inprocess-w") and e[len("inprocess-w") :].isdigit())
    ]
    if bad or args.rounds < 1:
        ap.error(f"unknown workload/engine {bad} or rounds < 1")
    info = device_info(args.device)
    results = run_all(args)
    text = section(results, info, argv)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": info, "results": results}, indent=1))
    if args.doc:
        doc = Path(args.doc)
        doc.parent.mkdir(parents=True, exist_ok=True)
        with open(doc, "a") as f:
            f.write(("\n" if doc.stat().st_size else "") + text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
