"""Per-round latency of a real deployment against simulation, for the same small FedLabel run.

The same 2 x PER_SITE Fashion-MNIST images (10% labeled) and the same server test set run three
ways: the in-process engine (no Flower: the compute alone), Flower's simulation engine, and a
deployment on 127.0.0.1 (SuperLink + 2 SuperNodes as processes, TLS, node authentication). The
ServerApp times each round (train messages out, replies in, aggregation, evaluation). Replaces the
marked section of docs/deploy.md.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy_latency.py --rounds 4 --per-site 500
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fedlabel
from fedlabel import deploy
from fedlabel.config import unflatten
from fedlabel.data import load_fashion_mnist, save_site
from fedlabel.deploy_local import LocalFederation

DEPLOYED = "deployment: SuperLink + 2 SuperNodes, TLS + auth"
DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy.md"
BEGIN, END = "<!-- deploy_latency.py: begin -->", "<!-- deploy_latency.py: end -->"


def write_data(work: Path, *, per_site: int, test_samples: int, seed: int = 0) -> Path:
    """site1/, site2/ and bench.npz (train split = the sites' images in site order, for
    simulation)."""
    data = load_fashion_mnist(download=False)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(data.train_labels))[: 2 * per_site]
    n_labeled = round(0.1 * per_site)
    for s in range(2):
        part = idx[s * per_site : (s + 1) * per_site]
        save_site(
            work / f"site{s + 1}",
            labeled_images=data.train_images[part[:n_labeled]].numpy(),
            labeled_labels=data.train_labels[part[:n_labeled]].numpy(),
            unlabeled_images=data.train_images[part[n_labeled:]].numpy(),
        )
    test = rng.permutation(len(data.test_labels))[:test_samples]
    np.savez(
        work / "bench.npz",
        train_images=data.train_images[idx, 0].numpy(),
        train_labels=data.train_labels[idx].numpy(),
        test_images=data.test_images[test, 0].numpy(),
        test_labels=data.test_labels[test].numpy(),
    )
    return work / "bench.npz"


def settings(args, npz: Path) -> list[str]:
    return [
        f"rounds={args.rounds}",
        "clients_per_round=2",
        f"algorithm.local_steps={args.steps}",
        f"algorithm.unlabeled_steps={args.steps}",
        "device='cpu'",
        "data.name='npz'",
        f"data.root='{npz}'",
    ]


def simulate(engine: str, args, npz: Path, out: Path) -> dict:
    values = {
        "engine.name": engine,
        "data.num_clients": 2,
        "data.partition": "iid",
        "data.label_ratio": 0.1,
        "output_dir": str(out),
    }
    values.update(deploy.parse_override(item) for item in settings(args, npz))
    return fedlabel.run(unflatten(values), progress=False)


def deployed(args, work: Path, npz: Path) -> dict:
    fed = LocalFederation(work)
    fed.make_certs(2)
    try:
        start = time.perf_counter()
        fed.start_server()
        for site in ("site1", "site2"):
            fed.register(site)
            fed.join(site)
        fed.wait_online(2)
        startup = time.perf_counter() - start
        run_id = deploy.submit(
            sites=2, output_dir=str(work / "deployed"), overrides=settings(args, npz), env=fed.env
        )
        state = deploy.wait_run(run_id, timeout=3600, env=fed.env)
        if state["status"] != "finished:completed":
            raise RuntimeError(f"deployed run ended as {state['status']}; logs in {work}")
        summary = json.loads((work / "deployed" / "summary.json").read_text())
        summary["startup_seconds"] = startup
        return summary
    finally:
        fed.stop()


def row(name: str, s: dict) -> str:
    secs = [r["seconds"] for r in s["rounds"]]
    later = statistics.median(secs[1:]) if len(secs) > 1 else float("nan")
    return f"| {name} | {secs[0]:.1f} | {later:.1f} | {s['wall_seconds']:.1f} |"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-site", type=int, default=500)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5, help="algorithm.local_steps and unlabeled_steps")
    p.add_argument("--no-doc", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="deploy-latency-"))
    npz = write_data(work, per_site=args.per_site, test_samples=args.test_samples)
    results = {
        "in-process engine (no Flower)": simulate("inprocess", args, npz, work / "inprocess"),
        "Flower simulation engine": simulate("flower", args, npz, work / "simulation"),
        DEPLOYED: deployed(args, work, npz),
    }
    load = os.getloadavg()[0]
    cmd = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy_latency.py " + shlex.join(argv)
    table = "\n".join(
        [
            (
                f"`{cmd}` ({args.rounds} rounds, 2 sites x {args.per_site} images, 10% labeled,"
                f" {args.steps}+{args.steps} local steps, {args.test_samples} test images;"
                f" {os.cpu_count()} CPU cores, load average {load:.1f} at the end)"
            ),
            "",
            "| setup | round 1 (s) | later rounds, median (s) | whole run (s) |",
            "|---|---|---|---|",
            *(row(name, s) for name, s in results.items()),
            "",
            (
                "Deployment start-up before the run (SuperLink healthy, 2 keys registered, 2"
                " SuperNodes online): "
                f"{results[DEPLOYED]['startup_seconds']:.1f} s."
            ),
        ]
    )
    print(table)
    if not args.no_doc:
        text = DOC.read_text()
        DOC.write_text(
            text[: text.index(BEGIN) + len(BEGIN)] + "\n" + table + "\n" + text[text.index(END) :]
        )


if __name__ == "__main__":
    main(sys.argv[1:])
