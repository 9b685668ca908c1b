"""FedMatch's pieces on tiny tensors: agreement labels, inter-client consistency, the sigma/psi
decomposition and its penalties, helper selection by model similarity, and the disjoint
client update."""

import pytest
import torch
import torch.nn.functional as F

from fedlabel.algorithms.base import ClientUpdate, ServerSetup
from fedlabel.algorithms.fedmatch import (
    FedMatch,
    FedMatchParams,
    agreement_pseudo_labels,
    compose,
    consistency_loss,
    decompose,
    decomposition_penalty,
    nearest_helpers,
    split,
)
from fedlabel.config import ConfigError
from fedlabel.training import ClientContext, forward
from tests.helpers import tiny_client, tiny_model


def _onehotish(classes, conf=0.8, num_classes=3):
    """Probability rows with max probability ``conf`` on the given classes."""
    p = torch.full((len(classes), num_classes), (1 - conf) / (num_classes - 1))
    p[torch.arange(len(classes)), torch.tensor(classes)] = conf
    return p


def test_agreement_labels_vote_and_confidence():
    local = _onehotish([0, 0, 2, 0])
    local[1] = torch.tensor([0.5, 0.4, 0.1])  # not confident
    helpers = torch.stack([_onehotish([1, 1, 2, 1]), _onehotish([1, 0, 0, 2])])
    a = agreement_pseudo_labels(local, helpers, confidence=0.75, agreement="plurality")
    # votes: s0 {0:1, 1:2} -> 1; s1 {0:2, 1:1} -> 0; s2 {2:2, 0:1} -> 2; s3 {0,1,2} one each -> 0
    # (lowest)
    assert a.pseudo_label.tolist() == [1, 0, 2, 0]
    assert a.votes.tolist() == [2, 2, 2, 1]
    assert a.confident.tolist() == [True, False, True, True]
    assert a.keep.tolist() == [True, False, True, True]
    m = agreement_pseudo_labels(local, helpers, confidence=0.75, agreement="majority")
    assert m.keep.tolist() == [True, False, True, False]  # s3 has no majority (1 of 3 votes)


def test_agreement_without_helpers_is_the_local_argmax():
    local = _onehotish([2, 1], conf=0.9)
    a = agreement_pseudo_labels(local, torch.zeros(0, 2, 3), confidence=0.95)
    assert a.pseudo_label.tolist() == [2, 1] and a.keep.tolist() == [False, False]


def test_consistency_loss_matches_slow_reference():
    g = torch.Generator().manual_seed(0)
    local = torch.randn(5, 4, generator=g)
    helpers = torch.randn(3, 5, 4, generator=g).softmax(2)
    mask = torch.tensor([True, False, True, True, False])
    expected, n = 0.0, 0
    for i in range(5):
        if mask[i]:
            kls = [
                F.kl_div(local[i].log_softmax(0), helpers[j, i], reduction="sum") for j in range(3)
            ]
            expected += sum(kls) / 3
            n += 1
    assert consistency_loss(local, helpers, mask).item() == pytest.approx(
        float(expected) / n, rel=1e-5
    )
    assert consistency_loss(local, torch.zeros(0, 5, 4), mask).item() == 0.0


def test_decomposition_round_trip_and_threshold():
    theta = {"w": torch.tensor([1.2, -2.4, 0.0])}
    state = decompose(theta, psi_factor=0.2)
    sigma, psi = split(state)
    assert torch.allclose(sigma["w"], torch.tensor([1.0, -2.0, 0.0]))
    assert torch.allclose(psi["w"], 0.2 * sigma["w"])
    assert torch.allclose(compose(sigma, psi)["w"], theta["w"])
    # |psi| <= l1_thres is dropped: psi = (0.2, -0.4, 0) -> keep only -0.4
    assert torch.allclose(compose(sigma, psi, l1_thres=0.3)["w"], torch.tensor([1.0, -2.4, 0.0]))


def test_decomposition_penalty_l1_on_psi_and_l2_between_sigma_and_psi():
    sigma, psi = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, -1.0])}
    # |psi|_1 = 1.5 ; |sigma - psi|^2 = 0.25 + 9 = 9.25
    assert decomposition_penalty(sigma, psi, lambda_l1=2.0, lambda_l2=0.1).item() == pytest.approx(
        2 * 1.5 + 0.1 * 9.25
    )


def test_nearest_helpers_by_embedding_distance():
    emb = {
        0: torch.tensor([0.0, 0.0]),
        1: torch.tensor([3.0, 0.0]),
        2: torch.tensor([1.0, 0.0]),
        5: torch.tensor([-1.0, 0.0]),
    }
    assert nearest_helpers(emb, 0, 2) == [2, 5]  # distance 1 tie -> lower id first
    assert nearest_helpers(emb, 1, 3) == [2, 0, 5]
    assert nearest_helpers(emb, 7, 2) == []  # never seen: no helpers
    assert nearest_helpers({0: torch.zeros(2)}, 0, 2) == []


def _server(**kw):
    model, params = tiny_model()
    algo = FedMatch(FedMatchParams(**kw))
    state = algo.init_global(params, setup=ServerSetup(model=model, seed=0, input_shape=(1, 8, 8)))
    return algo, model, params, state


def test_server_embeds_returned_models_and_sends_nearest_helpers():
    algo, model, params, state = _server(num_helpers=1, helper_interval=2)
    assert set(state) == {f"sigma.{k}" for k in params} | {f"psi.{k}" for k in params}
    assert all(
        torch.allclose(algo.eval_params(state)[k], params[k], atol=1e-5) for k in params
    )  # |psi| <= l1_thres dropped
    g = torch.Generator().manual_seed(1)
    scales = {0: 0.0, 1: 0.02, 2: 1.0}  # client 1's model is close to client 0's, client 2's is far
    noise = {k: torch.randn(v.shape, generator=g) for k, v in state.items()}
    updates = [
        ClientUpdate(c, {"model": {k: s * noise[k] for k in state}}, 1.0) for c, s in scales.items()
    ]
    algo.aggregate(state, updates)
    assert sorted(algo.embeddings) == [0, 1, 2]
    new0 = {k: state[k] + updates[0].deltas["model"][k] for k in state}
    expected = forward(model, compose(*split(new0)), algo._probe).softmax(1).flatten()
    assert torch.allclose(algo.embeddings[0], expected)
    assert algo.client_payload(3, [0, 2], state) == {}  # not a helper round
    payload = algo.client_payload(4, [0, 2, 9], state)
    assert set(payload) == {0, 2}  # client 9 was never seen
    assert list(payload[0]) == ["helper0"]
    _, psi1 = split({k: state[k] + updates[1].deltas["model"][k] for k in state})
    assert all(torch.equal(payload[0]["helper0"][k], psi1[k]) for k in psi1)  # helper psi travels
    restored = FedMatch(FedMatchParams(num_helpers=1, helper_interval=2))
    restored.load_state_dict(algo.state_dict())
    assert restored.helper_models.keys() == algo.helper_models.keys()
    assert all(torch.equal(restored.embeddings[c], algo.embeddings[c]) for c in algo.embeddings)


def test_client_update_is_disjoint_sigma_labeled_psi_unlabeled():
    algo, model, params, state = _server(
        lambda_i=0.0, lambda_a=0.0, lambda_l1=0.0, lambda_l2=0.0, local_steps=3
    )
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    # unlabeled terms switched off: psi does not move, sigma does
    u = algo.client_update(
        model,
        state,
        tiny_client(num_labeled=8, num_unlabeled=12),
        ClientContext(torch.device("cpu"), gen()),
    )
    sigma_d, psi_d = split(u.deltas["model"])
    assert all(v.abs().max() == 0 for v in psi_d.values()) and any(
        v.abs().max() > 0 for v in sigma_d.values()
    )
    assert (
        u.weight == 20
        and u.metrics["num_unlabeled"] == 3 * 12
        and u.metrics["num_helper_models"] == 0
    )
    # no labeled data: sigma does not move; psi learns from the unlabeled terms
    algo, model, params, state = _server(confidence_threshold=0.0, local_steps=3)
    sigma, _ = split(state)
    helpers = {"helper0": split(state)[1], "helper1": split(state)[1]}
    u = algo.client_update(
        model,
        state,
        tiny_client(num_labeled=0, num_unlabeled=12),
        ClientContext(torch.device("cpu"), gen()),
        extras=helpers,
    )
    sigma_d, psi_d = split(u.deltas["model"])
    assert all(v.abs().max() == 0 for v in sigma_d.values()) and any(
        v.abs().max() > 0 for v in psi_d.values()
    )
    assert (
        u.metrics["num_helper_models"] == 2 and u.metrics["num_kept"] == 3 * 12
    )  # threshold 0 keeps all


def test_params_validation_names_field():
    with pytest.raises(ConfigError, match="algorithm.helper_payload"):
        FedMatchParams(helper_payload="both").validate()
    with pytest.raises(ConfigError, match="algorithm.confidence_threshold"):
        FedMatchParams(confidence_threshold=1.5).validate()


def test_pooled_round_metrics_count_helpers_and_no_expert_share():
    from fedlabel.algorithms.fedavg import FedAvg, FedAvgParams
    from fedlabel.algorithms.fedlabel import FedLabel, FedLabelParams

    ups = [
        ClientUpdate(
            c,
            {},
            1.0,
            {"num_unlabeled": 10, "num_kept": 5, "num_kept_correct": 4, "num_helper_models": c},
        )
        for c in (1, 2)
    ]
    m = FedMatch(FedMatchParams()).pool_metrics(ups)
    assert (
        m["helper_models"] == 3
        and m["pseudo_label_coverage"] == 0.5
        and m["pseudo_label_accuracy"] == 0.8
    )
    expert = FedLabel(FedLabelParams()).pool_metrics(ups)  # no expert choice in FedMatch's counters
    assert expert["global_expert_share"] is None and expert["local_expert_accuracy"] is None
    assert "global_expert_share" not in m  # FedLabel's fields are FedLabel's
    assert "helper_models" not in FedAvg(FedAvgParams()).pool_metrics(
        [ClientUpdate(0, {}, 1.0, {"num_labeled": 3})]
    )
