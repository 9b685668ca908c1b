"""Diagnostic: FedLabel with perfect pseudo-labels (every unlabeled sample kept, labeled with its
true class; the KL term still applies where the non-expert agrees with the truth).

Its accuracy bounds what better pseudo-labeling could give FedLabel's unlabeled branch in a
setting; the gap to plain FedLabel is the cost of pseudo-label errors. Simulation only (it reads
the ground truth of the unlabeled part).

    python benchmarks/fedlabel_oracle.py output_dir=/tmp/oracle rounds=60
    algorithm.delta_combination=mean
"""

from __future__ import annotations

import sys

import torch

import fedlabel
import fedlabel.algorithms.fedlabel as fl
from fedlabel.config import unflatten

_truth: dict[str, torch.Tensor] = {}
_select, _client_update = fl.select_experts, fl.FedLabel.client_update


def oracle_select(global_logits, local_logits, **kwargs) -> fl.ExpertChoice:
    c = _select(global_logits, local_logits, **kwargs)
    truth = _truth["labels"].to(c.pseudo_label.device)
    right = c.pseudo_label == truth
    return fl.ExpertChoice(
        truth,
        torch.ones_like(c.keep),
        c.agree & right,
        c.consistency_weight * right,
        c.minus_probs,
        c.global_is_expert,
    )


def oracle_client_update(self, model, global_params, data, ctx, **kwargs):
    _truth["labels"] = data.unlabeled_true_labels
    return _client_update(self, model, global_params, data, ctx, **kwargs)


def main(argv: list[str]) -> None:
    fl.select_experts, fl.FedLabel.client_update = oracle_select, oracle_client_update
    values = {"engine.name": "inprocess", "data.num_clients": 100, "rounds": 60}
    for arg in argv:
        key, value = arg.split("=", 1)
        values[key] = (
            type(value)(value)
            if not value.replace(".", "", 1).isdigit()
            else (float(value) if "." in value else int(value))
        )
    fedlabel.run(unflatten(values))


if __name__ == "__main__":
    main(sys.argv[1:])
