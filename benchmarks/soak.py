"""Soak benchmark: many rounds of a tiny config on the in-process engine, with checkpoints after
every round and injected faults, sampling the process's resident memory (RSS) after every round.
Memory must stay flat: the script reports the least-squares slope of RSS over the rounds after
a warm-up and writes docs/soak.json and docs/figures/soak_rss.png.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak.py            # 500 rounds
    .venv/bin/python benchmarks/soak.py --rounds 50 --output /tmp/soak               # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlabel.config import config_from_dict  # noqa: E402
from fedlabel.engines.inprocess import run_inprocess  # noqa: E402


def rss_mib() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak_config(rounds: int, output_dir: Path) -> dict:
    """8 clients of real Fashion-MNIST (2,000 images), 4 per round, 1+1 local steps, evaluation
    every 50 rounds, a checkpoint every round, 5% each of crashes, dropouts and stragglers."""
    return {
        "algorithm": {"name": "fedlabel", "local_steps": 1, "unlabeled_steps": 1, "batch_size": 16},
        "data": {"num_clients": 8, "train_samples": 2000, "alpha": 0.5, "label_ratio": 0.1},
        "engine": {"name": "inprocess"},
        "faults": {
            "crash_prob": 0.05,
            "dropout_prob": 0.05,
            "straggler_prob": 0.05,
            "round_deadline_s": 1.0,
        },
        "rounds": rounds,
        "clients_per_round": 4,
        "eval_every": 50,
        "checkpoint_every": 1,
        "device": "cpu",
        "seed": 0,
        "output_dir": str(output_dir),
    }


def slope_per_100_rounds(rounds: np.ndarray, rss: np.ndarray) -> float:
    return float(np.polyfit(rounds, rss, 1)[0] * 100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50, help="rounds left out of the slope fit")
    parser.add_argument("--output", type=Path, default=Path("outputs/soak"))
    parser.add_argument(
        "--docs",
        type=Path,
        default=ROOT / "docs",
        help="where soak.json and figures/ go ('' = nowhere)",
    )
    args = parser.parse_args()

    cfg = config_from_dict(soak_config(args.rounds, args.output.resolve()))
    samples: list[tuple[int, float]] = []
    start_rss = rss_mib()
    start = time.perf_counter()
    summary = run_inprocess(
        cfg, progress=False, on_round=lambda record: samples.append((record["round"], rss_mib()))
    )
    wall = time.perf_counter() - start

    rounds = np.array([r for r, _ in samples], float)
    rss = np.array([m for _, m in samples])
    after = rounds > args.warmup
    result = {
        "command": " ".join(["python", "benchmarks/soak.py", *sys.argv[1:]]),
        "config": soak_config(args.rounds, Path("<output>")),
        "rounds": len(samples),
        "wall_seconds": round(wall, 1),
        "seconds_per_round": round(wall / max(len(samples), 1), 3),
        "rss_mib_before_run": round(start_rss, 1),
        "rss_mib_after_round_1": round(float(rss[0]), 1),
        "rss_mib_after_warmup": round(float(rss[after][0]), 1) if after.any() else None,
        "rss_mib_last": round(float(rss[-1]), 1),
        "rss_mib_max": round(float(rss.max()), 1),
        "slope_mib_per_100_rounds_after_warmup": (
            round(slope_per_100_rounds(rounds[after], rss[after]), 3) if after.sum() > 1 else None
        ),
        "failed_clients": sum(r["failed_clients"] for r in summary["rounds"]),
        "final_accuracy": summary["final_accuracy"],
        "torch_threads": torch.get_num_threads(),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()},"
            f" torch {torch.__version__}"
        ),
        "rss_mib_per_round": [round(float(m), 2) for m in rss],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mib_per_round"}, indent=2))
    if str(args.docs):
        args.docs.mkdir(parents=True, exist_ok=True)
        (args.docs / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
        plot(rounds, rss, args.warmup, args.docs / "figures" / "soak_rss.png")


def plot(rounds: np.ndarray, rss: np.ndarray, warmup: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, rss, lw=1)
    ax.axvline(warmup, color="grey", ls=":", lw=1)
    ax.set_xlabel("round")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("soak: RSS after every round (in-process engine)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
