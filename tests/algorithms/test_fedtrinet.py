"""FedTriNet's pieces on tiny tensors: Tri-net agreement labelling with its budget, the
pseudo-label schedule, the loss (the sum of the heads' cross-entropies), output smearing and
label editing, the three-head state and its ensemble evaluation, the warm-up."""

import math

import pytest
import torch

from fedlabel.algorithms.base import ServerSetup
from fedlabel.algorithms.fedtrinet import (
    CONTROL,
    FedTriNet,
    FedTriNetParams,
    TriLabels,
    TriNet,
    edit_labels,
    ensemble_head,
    pseudo_label_budget,
    smeared_labels,
    tri_labels,
    tri_loss,
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


def _ce(logits, target):
    """-sum_c target_c log softmax(logits)_c of one row, written out."""
    z = [math.exp(v) for v in logits]
    return -sum(t * math.log(e / sum(z)) for t, e in zip(target, z, strict=True))


def test_loss_is_the_sum_of_the_heads_cross_entropies():
    # 3 heads, 2 labeled rows, 2 unlabeled rows, 2 classes
    logits_l = torch.tensor(
        [[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, 0.0]], [[0.0, 2.0], [0.5, 0.0]]],
        requires_grad=True,
    )
    logits_u = torch.tensor(
        [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [1.0, 0.0]], [[2.0, 1.0], [0.0, 1.0]]]
    )
    y = torch.tensor([0, 1])
    pseudo = TriLabels(
        torch.tensor([[0, 1], [1, 0], [1, 1]]),
        torch.tensor([[True, False], [True, True], [False, False]]),
    )
    sup, uns = tri_loss(logits_l, y, logits_u, pseudo)
    one_hot = {0: (1, 0), 1: (0, 1)}
    want_sup = sum(
        (_ce(logits_l[k, 0].tolist(), one_hot[0]) + _ce(logits_l[k, 1].tolist(), one_hot[1])) / 2
        for k in range(3)
    )
    # head 0 takes row 0 (label 0), head 1 rows 0 and 1 (labels 1, 0), head 2 nothing
    want_uns = (
        _ce([1.0, 0.0], one_hot[0])
        + (_ce([0.0, 2.0], one_hot[1]) + _ce([1.0, 0.0], one_hot[0])) / 2
    )
    assert sup.item() == pytest.approx(want_sup, rel=1e-6)
    assert uns.item() == pytest.approx(want_uns, rel=1e-6)
    # each head gets the full gradient of its own cross-entropy (not a third of it)
    sup.backward()
    alone = logits_l.detach()[1].clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(alone, y).backward()
    assert torch.allclose(logits_l.grad[1], alone.grad)
    # per-head soft (smeared) targets: each head is scored against its own distribution
    soft = torch.tensor(
        [[[0.9, 0.1], [0.2, 0.8]], [[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.3, 0.7]]]
    )
    sup_soft, _ = tri_loss(logits_l, soft, logits_u, pseudo)
    want = sum(
        (
            _ce(logits_l[k, 0].tolist(), soft[k, 0].tolist())
            + _ce(logits_l[k, 1].tolist(), soft[k, 1].tolist())
        )
        / 2
        for k in range(3)
    )
    assert sup_soft.item() == pytest.approx(want, rel=1e-6)
    # no labeled rows: the labeled part is 0, not NaN
    assert tri_loss(logits_l[:, :0], y[:0], logits_u, pseudo)[0].item() == 0.0


def test_output_smearing_is_seeded_noise_on_the_one_hot_labels_per_head():
    y = torch.tensor([0, 2, 1])
    t = smeared_labels(y, 3, std=0.1, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(0)).mul(0.1).clamp_min(0)
    want = torch.nn.functional.one_hot(y, 3).float() + noise
    assert torch.allclose(t, want / want.sum(2, keepdim=True))
    assert torch.allclose(t.sum(2), torch.ones(3, 3))
    assert (t.argmax(2) == y).all()  # small noise keeps the true class on top
    assert not torch.equal(t[0], t[1])  # every head its own smeared label set
    assert torch.equal(t, smeared_labels(y, 3, std=0.1, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(
        smeared_labels(y, 3, std=0.0, generator=torch.Generator()),
        torch.nn.functional.one_hot(y, 3).float().expand(3, 3, 3),
    )


def test_label_editing_drops_labels_the_labelling_heads_do_not_keep_in_two_thirds_of_passes():
    labels = TriLabels(
        torch.tensor([[1, 1], [0, 0], [2, 2]]),
        torch.tensor([[True, True], [True, False], [True, True]]),
    )
    # 3 passes x 3 heads x 2 samples
    votes = torch.tensor(
        [
            [[0, 0], [1, 1], [2, 1]],
            [[0, 0], [1, 0], [2, 1]],
            [[0, 2], [1, 1], [2, 1]],
        ]
    )
    edited = edit_labels(labels, votes)
    # head 0 (labelled by heads 1, 2 as 1): sample 0 head 2 votes 1 in 0/3 -> drop;
    #   sample 1: head 1 votes 1 in 2/3, head 2 in 3/3 -> keep
    # head 1 (label 0 from heads 0, 2): sample 0 head 2 never votes 0 -> drop; sample 1 not taken
    # head 2 (label 2 from heads 0, 1): sample 0 head 0 votes 2 in 0/3 -> drop;
    #   sample 1: head 0 votes 2 in 1/3 -> drop
    assert edited.mask.tolist() == [[False, True], [False, False], [False, False]]
    assert torch.equal(edited.pseudo_label, labels.pseudo_label)
    unanimous = edit_labels(labels, labels.pseudo_label.new_tensor([[[1, 1], [1, 1], [1, 1]]] * 3))
    assert unanimous.mask.tolist() == [[True, True], [False, False], [False, False]]


def test_editing_on_a_client_is_seeded_and_only_removes_pseudo_labels():
    algo, model, params, state = _setup(edit_passes=9, edit_dropout=0.5)
    plain = _setup(edit_passes=0)[0]
    client = tiny_client(num_labeled=8, num_unlabeled=40)
    extras = {CONTROL: algo.client_payload(2, [0], state)[0][CONTROL]}

    def run(a):
        ctx = ClientContext(torch.device("cpu"), torch.Generator().manual_seed(3))
        return a.client_update(model, state, client, ctx, extras=extras)

    edited, again, unedited = run(algo), run(algo), run(plain)
    assert edited.metrics == again.metrics
    assert edited.metrics["num_kept"] < unedited.metrics["num_kept"]


def _setup(seed=0, **overrides):
    model, params = tiny_model()
    settings = dict(local_steps=3, warmup_rounds=1, tri_threshold=0.0, initial_budget=0.5)
    # the untrained tiny model's labels do not survive label editing; the plumbing tests below
    # see them unedited (editing has its own tests above)
    settings["edit_passes"] = 0
    algo = FedTriNet(FedTriNetParams(**{**settings, **overrides}))
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
    for bad in (
        {"smear_std": -0.1},
        {"smear_std": math.inf},
        {"edit_passes": -1},
        {"edit_dropout": 1.0},
        {"edit_dropout": -0.1},
        {"edit_dropout": 0.0},  # with edit_passes > 0 (the default)
    ):
        (key,) = bad
        with pytest.raises(ConfigError, match=f"algorithm.{key}"):
            FedTriNetParams(**bad).validate()
    FedTriNetParams(edit_passes=0, edit_dropout=0.0, smear_std=0.0).validate()


def test_output_smearing_changes_the_warmup_only():
    client = tiny_client(num_labeled=8, num_unlabeled=12)

    def update(rnd, **overrides):
        algo, model, _, state = _setup(**overrides)
        ctx = ClientContext(torch.device("cpu"), torch.Generator().manual_seed(0))
        extras = algo.client_payload(rnd, [0], state)[0]
        return algo.client_update(model, state, client, ctx, extras=extras).deltas["model"]

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert not same(update(1, smear_std=0.1), update(1, smear_std=0.0))  # warm-up: smeared
    assert same(update(1, smear_std=0.1), update(1, smear_std=0.1))  # seeded
    assert same(update(2, smear_std=0.1), update(2, smear_std=0.0))  # pseudo-label rounds: not
