import torch
import torch.nn.functional as F

from fedlabel.algorithms.fedavg import FedAvg, FedAvgParams, train_labeled
from fedlabel.training import ClientContext, forward
from tests.helpers import tiny_client, tiny_model


def test_fedavg_update_weight_is_labeled_count_and_training_lowers_loss():
    client = tiny_client(num_labeled=12, num_unlabeled=5)
    model, w = tiny_model()
    params = FedAvgParams(local_steps=30, batch_size=12, weak_shift=0, lr=0.1)
    u = FedAvg(params).client_update(
        model, w, client, ClientContext(torch.device("cpu"), torch.Generator().manual_seed(0))
    )
    assert u.weight == 12 and set(u.deltas) == {"model"}
    x, y = client.labeled_images.float() / 255, client.labeled_labels
    before = F.cross_entropy(forward(model, w, x), y)
    after = F.cross_entropy(forward(model, {k: w[k] + u.deltas["model"][k] for k in w}, x), y)
    assert after < before


def test_no_labeled_samples_means_no_step():
    client = tiny_client(num_labeled=0, num_unlabeled=5)
    model, w = tiny_model()
    local, loss = train_labeled(
        model, w, client, FedAvgParams(), ClientContext(torch.device("cpu"), torch.Generator())
    )
    assert all(torch.equal(local[k], w[k]) for k in w) and loss == 0.0
