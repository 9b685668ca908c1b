"""The DLLP proportion loss on hand-computed tensors."""

import math

import torch
import torch.nn.functional as F

from fedlabel.llp.losses import proportion_loss


def test_proportion_loss_hand_computed():
    # softmax rows: [.5, .5], [.75, .25] (bag 0), [.2, .8] (bag 1)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(4.0)]])
    bag_of = torch.tensor([0, 0, 1])
    proportions = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    bag0 = -math.log(0.625)  # mean [.625, .375], p = [1, 0]
    bag1 = -(0.5 * math.log(0.2) + 0.5 * math.log(0.8))
    assert math.isclose(
        float(proportion_loss(logits, bag_of, proportions)), (bag0 + bag1) / 2, rel_tol=1e-6
    )


def test_bags_absent_from_the_batch_are_ignored_and_ids_need_not_be_contiguous():
    logits = torch.tensor([[1.0, -1.0], [0.5, 0.2]])
    proportions = torch.tensor([[0.0, 1.0], [0.3, 0.7], [9.0, 9.0], [0.6, 0.4]])
    got = proportion_loss(logits, torch.tensor([3, 1]), proportions)
    probs = logits.softmax(1)
    want = -((proportions[3] * probs[0].log()).sum() + (proportions[1] * probs[1].log()).sum()) / 2
    assert torch.allclose(got, want)


def test_bags_of_one_with_exact_labels_give_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    got = proportion_loss(logits, torch.arange(6), F.one_hot(labels, 4).float())
    assert torch.allclose(got, F.cross_entropy(logits, labels), atol=1e-6)


def test_proportion_loss_has_gradients():
    logits = torch.zeros(4, 3, requires_grad=True)
    proportion_loss(
        logits, torch.tensor([0, 0, 1, 1]), torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5]])
    ).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
