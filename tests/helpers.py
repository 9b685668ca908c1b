"""Small shared builders for tests: tiny clients, tiny models, tiny configs."""

from __future__ import annotations

import torch

from fedlabel.data import ClientData
from fedlabel.models import SmallCNN
from fedlabel.training import get_params


def tiny_client(
    *, num_labeled: int, num_unlabeled: int, client_id: int = 0, num_classes: int = 3, seed: int = 0
) -> ClientData:
    g = torch.Generator().manual_seed(seed)
    return ClientData(
        client_id=client_id,
        labeled_images=torch.randint(
            0, 256, (num_labeled, 1, 8, 8), generator=g, dtype=torch.uint8
        ),
        labeled_labels=torch.randint(0, num_classes, (num_labeled,), generator=g),
        unlabeled_images=torch.randint(
            0, 256, (num_unlabeled, 1, 8, 8), generator=g, dtype=torch.uint8
        ),
        unlabeled_true_labels=torch.randint(0, num_classes, (num_unlabeled,), generator=g),
    )


def tiny_model(num_classes: int = 3, seed: int = 0, activation: str = "relu"):
    torch.manual_seed(seed)
    model = SmallCNN(in_channels=1, num_classes=num_classes, image_size=8, activation=activation)
    return model, get_params(model)
