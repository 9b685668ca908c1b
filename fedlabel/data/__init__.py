"""Datasets (Fashion-MNIST, MedMNIST-style .npz), client partitions and labeled/unlabeled splits,
and real sites' data directories."""

from fedlabel.data.bags import Bags, BagSpec, InstanceLabelsUnavailable
from fedlabel.data.dataset import ImageDataset
from fedlabel.data.errors import DataError
from fedlabel.data.fashion_mnist import load_fashion_mnist
from fedlabel.data.federated import (
    ClientData,
    FederatedData,
    build_federated,
    evaluation_test_set,
    load_images,
    validation_set,
)
from fedlabel.data.npz import load_npz
from fedlabel.data.partition import (
    partition_dirichlet,
    partition_iid,
    split_labeled,
    split_validation,
)
from fedlabel.data.site import load_site, save_site

__all__ = [
    "BagSpec",
    "Bags",
    "InstanceLabelsUnavailable",
    "ClientData",
    "DataError",
    "FederatedData",
    "ImageDataset",
    "build_federated",
    "load_fashion_mnist",
    "load_images",
    "load_npz",
    "load_site",
    "partition_dirichlet",
    "partition_iid",
    "save_site",
    "split_labeled",
    "split_validation",
    "evaluation_test_set",
    "validation_set",
]
