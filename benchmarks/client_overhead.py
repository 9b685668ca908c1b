"""The in-process engine's cost per client update against the floor's plain loop, in one process.

    python benchmarks/client_overhead.py --workloads a,b --clients 10 --repeats 3

Both train the same clients of a throughput.py workload (FedAvg: the workload's SGD steps on
weakly shifted labeled batches), alternately, in CPU seconds of this process (steady on a shared
machine, unlike wall time); the minimum over repeats is reported. The engine side is
Algorithm.client_update (per-client generator, functional_call, the SGD loop on parameter dicts,
the delta); the floor side is nn.Module + torch.optim.SGD with one shared generator.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import workload_values  # noqa: E402

from fedlabel.algorithms import build_algorithm  # noqa: E402
from fedlabel.augment import weak_augment  # noqa: E402
from fedlabel.config import config_from_dict  # noqa: E402
from fedlabel.federation import client_generator, initial_model, load_federated  # noqa: E402
from fedlabel.training import (
    ClientContext,
    to_float,  # noqa: E402
)


def compare(workload: str, *, clients: int, repeats: int, data_root: str) -> tuple[float, float]:
    cfg = config_from_dict(
        workload_values(
            workload, "inprocess", rounds=3, device="cpu", data_root=data_root, out="unused"
        )
    )
    p = cfg.algorithm
    fed = load_federated(cfg)
    model, params = initial_model(
        cfg, in_channels=fed.in_channels, num_classes=fed.num_classes, image_size=fed.image_size
    )
    algorithm, cpu = build_algorithm(cfg.algorithm), torch.device("cpu")
    ids = [c.client_id for c in fed.clients if c.num_labeled >= p.batch_size][:clients]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def engine() -> None:
        for c in ids:
            algorithm.client_update(
                model,
                params,
                fed.clients[c],
                ClientContext(cpu, client_generator(seed=0, round=1, client_id=c)),
            )

    def floor() -> None:
        gen = torch.Generator().manual_seed(0)
        for c in ids:
            x, y = fed.clients[c].labeled_images, fed.clients[c].labeled_labels
            model.load_state_dict(state)
            opt = torch.optim.SGD(model.parameters(), lr=p.lr)
            for _ in range(p.local_steps):
                idx = torch.randperm(len(y), generator=gen)[: p.batch_size]
                xb = weak_augment(to_float(x[idx]), generator=gen, max_shift=p.weak_shift)
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    best = {"engine": float("inf"), "floor": float("inf")}
    for _ in range(repeats + 1):  # the first pass warms up and is not counted
        for name, fn in (("engine", engine), ("floor", floor)):
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start) if _ else best[name]
    return best["engine"] / len(ids), best["floor"] / len(ids)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workloads", default="a,b")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-root", default="")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| workload | engine CPU s / update | floor CPU s / update | engine / floor"
        " |\n|---|---|---|---|"
    )
    for w in args.workloads.split(","):
        e, f = compare(w, clients=args.clients, repeats=args.repeats, data_root=args.data_root)
        print(f"| {w} | {e:.4f} | {f:.4f} | {e / f:.3f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
