"""Accuracy of FedAvg trained from label proportions, against bag size (and DLLP against BP).

Every client's data is labeled but held as random bags of the given size that keep only class
counts; FedAvg's supervised branch trains on them by DLLP or BP (data.llp_method). Prints a
markdown table (method, bag size, label-DP epsilon of the counts, final and best test accuracy,
wall time) for docs/privacy.md. A run is method:bag_size or method:bag_size:epsilon (Laplace
noise on the counts; the default is exact counts).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/llp_bag_sizes.py [key=value ...]

Defaults: Fashion-MNIST shrunk to 6,000 training images over 10 clients (Dirichlet 0.5), all
labeled, 5 clients per round, 30 rounds, in-process engine; extra key=value pairs override
(e.g. rounds=60, runs=dllp:8,dllp:8:1.0,bp:8).
"""

from __future__ import annotations

import sys
import time

import fedlabel
from fedlabel.config import unflatten

BASE = {
    "engine.name": "inprocess",
    "algorithm.name": "fedavg",
    "device": "cpu",
    "seed": 0,
    "data.train_samples": 6000,
    "data.num_clients": 10,
    "data.alpha": 0.5,
    "data.label_ratio": 1.0,
    "clients_per_round": 5,
    "rounds": 30,
    "eval_every": 5,
}
RUNS = "dllp:1,dllp:8,dllp:32,dllp:128,bp:8,bp:32"


def parse(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def main(argv: list[str]) -> None:
    values = dict(BASE)
    runs = RUNS
    for arg in argv:
        key, value = arg.split("=", 1)
        if key == "runs":
            runs = value
        else:
            values[key] = parse(value)
    out = values.pop("output_dir", "/tmp/fedlabel-llp-bag-sizes")
    rows = []
    for run in runs.split(","):
        method, size, epsilon = (run.split(":") + ["0"])[:3]
        cfg = {
            **values,
            "data.llp_method": method,
            "data.bag_size": int(size),
            "data.proportion_epsilon": float(epsilon),
            "output_dir": f"{out}/{method}-{size}-{epsilon}",
        }
        start = time.perf_counter()
        summary = fedlabel.run(unflatten(cfg), progress=False)
        seconds = time.perf_counter() - start
        best = max(r["accuracy"] for r in summary["rounds"] if r["accuracy"] is not None)
        eps = "exact" if float(epsilon) == 0 else epsilon
        rows.append(
            f"| {method} | {size} | {eps} | {summary['final_accuracy']:.4f} | {best:.4f} |"
            f" {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    print(
        "\n| method | bag size | epsilon | final accuracy | best accuracy | wall s"
        " |\n|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
