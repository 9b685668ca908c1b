"""The Table 1 ablation: FedLabel with the expert fixed, registered under its own names
(presets)."""

import pytest
import torch

from fedlabel.algorithms import ALGORITHMS, build_algorithm
from fedlabel.algorithms.fedlabel import FedLabel, FedLabelParams
from fedlabel.config import ConfigError, config_from_dict
from fedlabel.training import ClientContext
from tests.helpers import tiny_client, tiny_model


def _update(algo, client):
    model, w = tiny_model()
    return algo.client_update(
        model, w, client, ClientContext(torch.device("cpu"), torch.Generator().manual_seed(1))
    )


@pytest.mark.parametrize(
    "name,expert", [("fedlabel_local_only", "local"), ("fedlabel_global_only", "global")]
)
def test_fixed_expert_is_fedlabel_with_that_expert(name, expert):
    cfg = config_from_dict(
        {
            "algorithm": {
                "name": name,
                "local_steps": 2,
                "unlabeled_steps": 2,
                "batch_size": 4,
                "beta": 0.0,
            }
        }
    )
    assert cfg.algorithm.expert == expert
    client = tiny_client(num_labeled=8, num_unlabeled=12)
    fixed = _update(build_algorithm(cfg.algorithm), client)
    same = _update(
        FedLabel(
            FedLabelParams(local_steps=2, unlabeled_steps=2, batch_size=4, beta=0.0, expert=expert)
        ),
        client,
    )
    assert all(
        torch.equal(fixed.deltas["model"][k], same.deltas["model"][k]) for k in same.deltas["model"]
    )
    assert fixed.metrics == same.metrics
    assert fixed.metrics["num_kept"] == 12  # beta 0 keeps all
    assert fixed.metrics["num_kept_global"] == (12 if expert == "global" else 0)


def test_fixed_expert_cannot_be_changed():
    with pytest.raises(ConfigError, match=r"algorithm\.expert"):
        ALGORITHMS["fedlabel_local_only"].params(expert="both")
    with pytest.raises(ConfigError, match=r"algorithm\.expert"):
        config_from_dict({"algorithm": {"name": "fedlabel_global_only", "expert": "local"}})
    ALGORITHMS["fedlabel_global_only"].params().validate()
