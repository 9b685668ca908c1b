"""A dishonest site against the server's defences: the table of docs/reliability.md
("Dishonest sites and DP noise").

Three clients of Fashion-MNIST shrunk to 2,000 images (the smoke experiment's data), all three in
every round, 3 rounds of FedAvg (3 local steps), in-process engine, CPU. Client 0 is dishonest
(faults.attack): its honest update x100, rescaled to 0.99 x faults.max_update_norm, sent with
weight 1e9 (and size 1e9 claimed at discovery), or with absurd counters. Each attack runs with the
schema's defaults and with every rule given by --rules (key=value overrides joined by commas;
"defaults" = none); the final test loss is compared with the same run without the attacker. Two
more rows: whether two DP-SGD updates of the same (seed, round, client) are equal (a server that
knows the config can regenerate and subtract seeded noise), and whether fedmatch with
central_dp is accepted.

    OMP_NUM_THREADS=1 python benchmarks/attacks.py [--rules defaults,aggregation.robust=median]
    [key=value ...]

Only the attack keys (faults.attack*) are needed from the code under test, so the same script
measures code from before the defences (give it --rules defaults there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import fedlabel
from fedlabel.algorithms import ALGORITHMS, build_algorithm
from fedlabel.config import PrivacyConfig, config_from_dict, unflatten
from fedlabel.errors import ConfigError
from fedlabel.federation import client_generator, initial_model, load_federated
from fedlabel.privacy.mechanism import private_client_update
from fedlabel.training import get_params

BASE = {
    "engine.name": "inprocess",
    "algorithm.name": "fedavg",
    "algorithm.local_steps": 3,
    "device": "cpu",
    "seed": 0,
    "data.train_samples": 2000,
    "data.num_clients": 3,
    "data.alpha": 0.5,
    "data.label_ratio": 0.1,
    "clients_per_round": 3,
    "rounds": 3,
}
ATTACKS = {
    "none": {},
    "honest update x100": {"faults.attack": "scale", "faults.attack_scale": 100.0},
    "update at 0.99 x max_update_norm": {"faults.attack": "norm", "faults.attack_scale": 0.99},
    "weight (and size) 1e9": {"faults.attack": "weight", "faults.attack_scale": 1e9},
    "num_kept=1e9, loss_labeled=-1e30": {"faults.attack": "counters"},
}


def parse(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value, value)


def overrides(text: str) -> dict:
    pairs = [p.split("=", 1) for p in text.split(",") if p and p != "defaults"]
    return {k: parse(v) for k, v in pairs}


def run(flat: dict, workdir: Path, label: str) -> dict:
    start = time.perf_counter()
    values = unflatten({**flat, "output_dir": str(workdir / label)})
    try:
        summary = fedlabel.run(values, progress=False)
    except Exception as err:  # noqa: BLE001 - a run the attack stops is a result too
        return {
            "error": f"{type(err).__name__}: {str(err)[:160]}",
            "seconds": time.perf_counter() - start,
        }
    rounds = summary["rounds"]
    return {
        "losses": [r["loss"] for r in rounds],
        "rejected": sorted({(x["client"], x["reason"]) for r in rounds for x in r["rejected"]}),
        "bounded": sorted({(x["client"], x["kind"]) for r in rounds for x in r.get("bounded", [])}),
        "coverage": rounds[-1]["pseudo_label_coverage"],
        "loss_labeled": rounds[-1]["loss_labeled"],
        "seconds": time.perf_counter() - start,
    }


def outcome(result: dict, honest_loss: float | None) -> str:
    if "error" in result:
        return f"run stopped: {result['error']}"
    loss = result["losses"][-1]
    ratio = f" ({loss / honest_loss:.2f}x)" if honest_loss else ""
    honest_rejected = sorted({c for c, _ in result["rejected"] if c != 0})
    parts = [f"loss {' -> '.join(f'{x:.4g}' for x in result['losses'])}{ratio}"]
    parts.append(f"honest rejected: {honest_rejected or 'none'}")
    attacker = [r for c, r in result["rejected"] if c == 0] + [
        f"bounded ({k})" for c, k in result["bounded"] if c == 0
    ]
    parts.append(f"attacker: {', '.join(attacker) or 'accepted'}")
    parts.append(f"published loss_labeled {result['loss_labeled']:.4g}")
    if result["coverage"] is not None:
        parts.append(f"pseudo_label_coverage {result['coverage']:.4g}")
    return "; ".join(parts)


def dpsgd_updates_equal(secure: bool) -> bool | str:
    """Two DP-SGD updates of client 0 in round 1 of the same config: bitwise equal?"""
    fields = {f.name for f in dataclasses.fields(PrivacyConfig)}
    if secure and "secure_noise" not in fields:
        return "no privacy.secure_noise"
    secure_keys = {"privacy.secure_noise": True} if secure else {}
    cfg = config_from_dict(unflatten({**BASE, "privacy.name": "dpsgd", **secure_keys}))
    fed = load_federated(cfg)
    shape = {
        "in_channels": fed.in_channels,
        "num_classes": fed.num_classes,
        "image_size": fed.image_size,
    }
    model, params = initial_model(cfg, **shape)
    algorithm = build_algorithm(cfg.algorithm)
    deltas = [
        private_client_update(
            algorithm,
            cfg.privacy,
            model,
            params,
            fed.clients[0],
            device=torch.device("cpu"),
            generator=client_generator(seed=cfg.seed, round=1, client_id=0),
        ).deltas["model"]
        for _ in range(2)
    ]
    return all(torch.equal(deltas[0][k], deltas[1][k]) for k in get_params(model))


def fedmatch_central_dp() -> str:
    if "fedmatch" not in ALGORITHMS:
        return "no fedmatch"
    try:
        config_from_dict(
            unflatten({**BASE, "algorithm.name": "fedmatch", "privacy.name": "central_dp"})
        )
    except ConfigError as err:
        return f"refused: {err}"
    return "accepted (FedMatch's helpers silently dropped)"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", default="defaults,aggregation.robust=median")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="key=value over the base config")
    args = parser.parse_args(argv)
    base = {**BASE, **{k: parse(v) for k, v in (o.split("=", 1) for o in args.overrides)}}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rule in args.rules.split(","):
            honest = None
            for attack, keys in ATTACKS.items():
                label = f"{rule}-{attack}".replace(" ", "_").replace("=", "-")
                result = run({**base, **overrides(rule), **keys}, Path(tmp), label)
                if attack == "none":
                    honest = result.get("losses", [None])[-1]
                results.append({"rule": rule, "attack": attack, **result})
                print(
                    f"| {attack} | {rule} | {outcome(result, honest if attack != 'none' else None)}"
                    f" | {result['seconds']:.0f} s |",
                    flush=True,
                )
    seeded, secure = dpsgd_updates_equal(False), dpsgd_updates_equal(True)
    print(
        "| regenerable DP-SGD noise | privacy=dpsgd | same (seed, round, client) bitwise equal:"
        f" seeded {seeded}, privacy.secure_noise=true {secure} | |"
    )
    refused = fedmatch_central_dp()
    print(f"| algorithm=fedmatch privacy=central_dp | | {refused} | |")
    if args.json:
        extra = {
            "dpsgd_equal": {"seeded": seeded, "secure": secure},
            "fedmatch_central_dp": refused,
        }
        args.json.write_text(
            json.dumps({"base": base, "runs": results, **extra}, indent=2, default=str) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
