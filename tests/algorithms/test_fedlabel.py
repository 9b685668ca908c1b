"""FedLabel's pure pieces on tiny hand-checked tensors, and its client update's invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from fedlabel.algorithms import ALGORITHMS
from fedlabel.algorithms.fedlabel import (
    ExpertChoice,
    FedLabel,
    FedLabelParams,
    batch_loss,
    confidence,
    select_experts,
    unlabeled_loss,
)
from fedlabel.config import ConfigError
from fedlabel.training import ClientContext
from tests.helpers import tiny_client, tiny_model


def test_confidence_variance_entropy_maxprob():
    logits = torch.tensor([[2.0, 0.0, -2.0], [0.0, 0.0, 0.0]])
    # population variance of (2, 0, -2) = 8/3; of zeros = 0
    assert torch.allclose(confidence(logits, "variance"), torch.tensor([8 / 3, 0.0]))
    p = torch.softmax(logits[0], 0)
    assert torch.allclose(confidence(logits, "maxprob"), torch.tensor([p.max().item(), 1 / 3]))
    ent = -(p * p.log()).sum()
    assert torch.allclose(
        confidence(logits, "entropy"), torch.tensor([math.log(3) - ent.item(), 0.0]), atol=1e-6
    )
    with pytest.raises(ValueError, match="unknown confidence"):
        confidence(logits, "margin")


def test_select_experts_per_sample_choice_threshold_and_lambda():
    # sample 0: global confident on class 0, local flat -> global expert, local agrees? argmax local
    # = 0 (tie -> 0)
    # sample 1: local confident on class 2, global mildly prefers 2 -> local expert, they agree
    # sample 2: local confident on 1, global confident (less) on 0 -> local expert, disagree
    # sample 3: both flat -> local (tie), below beta -> dropped
    g = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    l = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, 6.0], [0.0, 5.0, 0.0], [0.0, 0.0, 0.0]])
    c = select_experts(g, l, confidence_kind="variance", beta=0.5, lambda0=2.0)
    assert c.global_is_expert.tolist() == [True, False, False, False]
    assert c.pseudo_label.tolist()[:3] == [0, 2, 1]
    assert c.keep.tolist() == [True, True, True, False]
    assert c.agree.tolist() == [True, True, False, False]
    h_g, h_l = confidence(g, "variance"), confidence(l, "variance")
    expected0 = 2.0 * h_l[0] / h_g[0]
    expected1 = 2.0 * h_g[1] / h_l[1]
    assert torch.allclose(c.consistency_weight, torch.tensor([expected0, expected1, 0.0, 0.0]))
    assert (c.consistency_weight <= 2.0).all()
    # consistency target is the non-expert's distribution
    assert torch.allclose(c.minus_probs[0], torch.softmax(l[0], 0))
    assert torch.allclose(c.minus_probs[1], torch.softmax(g[1], 0))


def test_select_experts_fixed_expert_ablation():
    g = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    l = torch.tensor([[0.0, 1.0], [5.0, 0.0]])
    assert select_experts(
        g, l, confidence_kind="variance", beta=0.0, lambda0=1.0, expert="global"
    ).pseudo_label.tolist() == [0, 1]
    assert select_experts(
        g, l, confidence_kind="variance", beta=0.0, lambda0=1.0, expert="local"
    ).pseudo_label.tolist() == [1, 0]


def test_unlabeled_loss_matches_slow_reference():
    torch.manual_seed(0)
    g, l = torch.randn(6, 4) * 3, torch.randn(6, 4) * 3
    c = select_experts(g, l, confidence_kind="entropy", beta=0.4, lambda0=1.0)
    student, student_kl = torch.randn(6, 4), torch.randn(6, 4)
    for direction in ("teacher_student", "student_teacher"):
        total = 0.0
        for i in range(6):
            term = 0.0
            if c.keep[i]:
                term += F.cross_entropy(student[i : i + 1], c.pseudo_label[i : i + 1]).item()
            if c.agree[i]:
                q = c.minus_probs[i]
                s = torch.softmax(student_kl[i], 0)
                kl = (
                    (q * (q / s).log()).sum()
                    if direction == "teacher_student"
                    else (s * (s / q).log()).sum()
                )
                term += c.consistency_weight[i].item() * kl.item()
            total += term
        got = unlabeled_loss(student, student_kl, c, kl_direction=direction).item()
        assert got == pytest.approx(total / 6, rel=1e-5)


def test_unlabeled_loss_zero_when_nothing_kept():
    g, l = torch.zeros(3, 4), torch.zeros(3, 4)
    c = select_experts(g, l, confidence_kind="variance", beta=0.5, lambda0=1.0)
    assert not c.keep.any()
    assert unlabeled_loss(torch.randn(3, 4), torch.randn(3, 4), c).item() == 0.0


# Two unlabeled samples, two classes; the "student" reads its logits off the 2 x 1 x 1 images.
# Sample 0 is kept and the two experts agree (y_hat = 0, lambda = 0.5, q = softmax(s-) =
# (3/4, 1/4)); sample 1 is dropped. The student's logits: (ln 3, 0) on psi(x_0), softmax (3/4,
# 1/4) = q; (0, 0) on x_0, softmax (1/2, 1/2).
HAND_CHOICE = ExpertChoice(
    pseudo_label=torch.tensor([0, 1]),
    keep=torch.tensor([True, False]),
    agree=torch.tensor([True, False]),
    consistency_weight=torch.tensor([0.5, 0.0]),
    minus_probs=torch.tensor([[0.75, 0.25], [0.5, 0.5]]),
    global_is_expert=torch.tensor([True, False]),
)
HAND_STRONG = torch.tensor([[math.log(3), 0.0], [5.0, -5.0]]).view(2, 2, 1, 1)
HAND_CLEAN = torch.tensor([[0.0, 0.0], [-5.0, 5.0]]).view(2, 2, 1, 1)
HAND_CE = -math.log(0.75)  # CE(psi(x_0), y_hat = 0)


def _hand_loss(params: FedLabelParams) -> float:
    return batch_loss(lambda x: x.flatten(1), HAND_STRONG, HAND_CLEAN, HAND_CHOICE, params).item()


def test_paper_preset_consistency_is_kl_of_student_on_clean_x_to_s_minus():
    # Eqs. (6), (8) as written: KL(softmax(f(w_U, x)), q)
    #   = 1/2 ln((1/2) / (3/4)) + 1/2 ln((1/2) / (1/4)) = 1/2 ln(4/3)
    kl = 0.5 * math.log(4 / 3)
    paper = ALGORITHMS["fedlabel_paper"].params()
    assert _hand_loss(paper) == pytest.approx((HAND_CE + 0.5 * kl) / 2, rel=1e-6)


def test_default_consistency_is_kl_of_s_minus_to_student_on_psi_x():
    # KL(q, softmax(f(w_U, psi(x)))) = 0: the student on psi(x_0) already predicts q
    assert _hand_loss(ALGORITHMS["fedlabel"].params()) == pytest.approx(HAND_CE / 2, rel=1e-6)
    # the clean input with the default order: KL(q, (1/2, 1/2)) = 3/4 ln(3/2) + 1/4 ln(1/2)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    clean = ALGORITHMS["fedlabel"].params(kl_input="clean")
    assert _hand_loss(clean) == pytest.approx((HAND_CE + 0.5 * kl) / 2, rel=1e-6)


def _update(client, **overrides):
    params = FedLabelParams(local_steps=2, unlabeled_steps=2, batch_size=4, **overrides)
    model, global_params = tiny_model()
    algo = FedLabel(params)
    update = algo.client_update(
        model,
        global_params,
        client,
        ClientContext(torch.device("cpu"), torch.Generator().manual_seed(1)),
    )
    return algo, global_params, update


def test_client_update_weight_and_counters():
    client = tiny_client(num_labeled=8, num_unlabeled=12)
    _, _, u = _update(client, beta=0.0)
    m = u.metrics
    assert m["num_labeled"] == 8 and m["num_unlabeled"] == 12
    assert 0 <= m["num_kept_global"] <= m["num_kept"] <= 12
    assert 0 <= m["num_kept_correct"] <= m["num_kept"]
    assert u.weight == 8 + m["num_kept"]
    assert set(u.deltas) == {"model"}


def test_client_update_sum_is_twice_mean():
    client = tiny_client(num_labeled=8, num_unlabeled=12)
    _, _, s = _update(client, beta=0.0, delta_combination="sum")
    _, _, m = _update(client, beta=0.0, delta_combination="mean")
    for k in s.deltas["model"]:
        assert torch.allclose(s.deltas["model"][k], 2 * m.deltas["model"][k], atol=1e-6)


@pytest.mark.parametrize("num_labeled,num_unlabeled", [(0, 12), (8, 0), (0, 0)])
def test_client_without_labeled_or_unlabeled_samples(num_labeled, num_unlabeled):
    client = tiny_client(num_labeled=num_labeled, num_unlabeled=num_unlabeled)
    _, _, u = _update(client, beta=0.0)
    assert u.weight == num_labeled + u.metrics["num_kept"]
    for v in u.deltas["model"].values():
        assert torch.isfinite(v).all()
    if num_labeled == 0 and num_unlabeled == 0:
        assert all((v == 0).all() for v in u.deltas["model"].values())


def test_split_aggregation_uploads_two_deltas_and_averages_them():
    client = tiny_client(num_labeled=8, num_unlabeled=12)
    algo, w, u = _update(client, beta=0.0, aggregation="split")
    assert set(u.deltas) == {"labeled", "unlabeled"}
    new = algo.aggregate(w, [u])
    for k in w:
        assert torch.allclose(
            new[k], w[k] + 0.5 * (u.deltas["labeled"][k] + u.deltas["unlabeled"][k]), atol=1e-6
        )


def test_params_validation_names_field():
    with pytest.raises(ConfigError, match="algorithm.beta"):
        FedLabelParams(beta=1.5).validate()
    with pytest.raises(ConfigError, match="algorithm.kl_direction"):
        FedLabelParams(kl_direction="sideways").validate()
    with pytest.raises(ConfigError, match="algorithm.strong_magnitude_scale: must be >= 1"):
        FedLabelParams(strong_magnitude_scale=0).validate()
    with pytest.raises(ConfigError, match=r"algorithm.strong_magnitude: must be in \[0, 10\]"):
        FedLabelParams(strong_magnitude_scale=10, strong_magnitude=20).validate()
