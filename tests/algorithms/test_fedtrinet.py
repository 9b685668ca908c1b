"""FedTriNet's pieces on tiny tensors: Tri-net agreement labelling with its budget, the
pseudo-label schedule, the three-head state and its ensemble evaluation, the warm-up."""

import pytest
import torch

from fedlabel.algorithms.base import ServerSetup
from fedlabel.algorithms.fedtrinet import (
    CONTROL,
    FedTriNet,
    FedTriNetParams,
    TriNet,
    ensemble_head,
    pseudo_label_budget,
    tri_labels,
)
from fedlabel.config import ConfigError
from fedlabel.training import ClientContext, forward, to_float
from tests.helpers import tiny_client, tiny_model


def _probs(rows):
    """rows: per head, a list of (class, max prob) per sample, 3 classes."""
    out = torch.zeros(len(rows), len(rows[0]), 3)
    for h, row in enumerate(rows):
        for i, (c, p) in enumerate(row):
            out[h, i] = (1 - p) / 2
            out[h, i, c] = p
    return out


def test_tri_labels_two_other_heads_must_agree_confidently():
    probs = _probs(
        [
            [(0, 0.9), (1, 0.9), (2, 0.9), (0, 0.6)],  # head 0
            [(0, 0.8), (1, 0.95), (1, 0.9), (0, 0.9)],  # head 1
            [(0, 0.95), (2, 0.9), (1, 0.7), (0, 0.9)],  # head 2
        ]
    )
    t = tri_labels(probs, threshold=0.75, budget=10)
    # sample 0: all agree on 0 -> every head gets 0
    # sample 1: heads 0,1 agree on 1 -> head 2 gets 1; other pairs disagree
    # sample 2: heads 1,2 agree on 1 but head 2 has 0.7 <= 0.75 -> nobody
    # sample 3: heads 1,2 agree on 0 (0.9, 0.9) -> head 0 gets 0; pairs with head 0 (0.6) fail
    assert t.mask.tolist() == [
        [True, False, False, True],
        [True, False, False, False],
        [True, True, False, False],
    ]
    assert t.pseudo_label[0, 3] == 0 and t.pseudo_label[2, 1] == 1 and t.pseudo_label[1, 0] == 0


def test_tri_labels_budget_keeps_most_confident_agreements():
    probs = _probs(
        [[(0, 0.9)] * 3, [(1, 0.8), (1, 0.99), (1, 0.9)], [(1, 0.95), (1, 0.99), (1, 0.85)]]
    )
    t = tri_labels(probs, threshold=0.5, budget=2)
    # head 0 is labelled by heads 1, 2: min confidences 0.8, 0.99, 0.85 -> keep samples 1 and 2
    assert t.mask[0].tolist() == [False, True, True]
    assert tri_labels(probs, threshold=0.5, budget=0).mask.sum() == 0


def test_budget_schedule_doubles_after_warmup():
    b = [pseudo_label_budget(r, warmup_rounds=2, initial_budget=0.2) for r in range(1, 7)]
    assert b == [0.0, 0.0, 0.2, 0.4, 0.8, 1.0]


def _setup(seed=0):
    model, params = tiny_model()
    algo = FedTriNet(
        FedTriNetParams(local_steps=3, warmup_rounds=1, tri_threshold=0.0, initial_budget=0.5)
    )
    return (
        algo,
        model,
        params,
        algo.init_global(params, setup=ServerSetup(model=model, seed=seed, input_shape=(1, 8, 8))),
    )


def test_three_heads_seeded_and_ensemble_is_mean_of_logits():
    algo, model, params, state = _setup()
    assert set(state) - set(params) == {"head1.weight", "head1.bias", "head2.weight", "head2.bias"}
    assert not torch.equal(state["head1.weight"], state["classifier.weight"])
    assert not torch.equal(state["head1.weight"], state["head2.weight"])
    assert torch.equal(state["head1.weight"], _setup()[3]["head1.weight"])
    assert not torch.equal(state["head1.weight"], _setup(seed=1)[3]["head1.weight"])
    x = to_float(tiny_client(num_labeled=5, num_unlabeled=0).labeled_images)
    heads = forward(TriNet(model), state, x)
    assert heads.shape == (3, 5, 3)
    assert torch.allclose(
        heads[0], forward(model, params, x), atol=1e-6
    )  # head 0 is the model's own
    assert torch.allclose(forward(model, ensemble_head(state), x), heads.mean(0), atol=1e-5)
    assert set(algo.eval_params(state)) == set(params)


def test_warmup_round_uses_labeled_data_only_then_pseudo_labels():
    algo, model, params, state = _setup()
    client = tiny_client(num_labeled=8, num_unlabeled=12)
    cpu = torch.device("cpu")
    warm = algo.client_update(
        model,
        state,
        client,
        ClientContext(cpu, torch.Generator().manual_seed(0)),
        extras=algo.client_payload(1, [0], state)[0],
    )
    assert warm.metrics["num_kept"] == 0 and warm.weight == 8
    assert {k for k, v in warm.deltas["model"].items() if v.abs().max() > 0} == set(
        state
    )  # extractor and all heads learn
    control = algo.client_payload(2, [0], state)[0][CONTROL]
    assert float(control["budget"]) == 0.5
    semi = algo.client_update(
        model,
        state,
        client,
        ClientContext(cpu, torch.Generator().manual_seed(0)),
        extras={CONTROL: control},
    )
    # threshold 0: each head may take ceil(0.5 * 12) = 6 samples where the other two agree
    assert 0 < semi.metrics["num_kept"] <= 12 and semi.weight == 8 + semi.metrics["num_kept"]
    assert semi.metrics["loss_unlabeled"] > 0


def test_params_validation_names_field():
    with pytest.raises(ConfigError, match="algorithm.evaluation"):
        FedTriNetParams(evaluation="vote").validate()
    with pytest.raises(ConfigError, match="algorithm.initial_budget"):
        FedTriNetParams(initial_budget=0.0).validate()
