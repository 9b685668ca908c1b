"""The federation the deployment tests share: the server side (SuperLink behind nginx) and two
sites on 127.0.0.1, started with the `fedlabel deploy` commands, each test module its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedlabel import deploy
from fedlabel.data import DataError, load_fashion_mnist
from fedlabel.deploy_local import LocalFederation

RUN_TIMEOUT_S = 150
# Tiny but real: 200 Fashion-MNIST images per site (20 labeled), 300 test images on the server.
RUN_SETTINGS = [
    "clients_per_round=2",
    "algorithm.local_steps=2",
    "algorithm.unlabeled_steps=2",
    "algorithm.batch_size=16",
    "device='cpu'",
    "data.name='npz'",
]


def submit(fed: LocalFederation, name: str, *overrides: str, sites: int = 2) -> int:
    return deploy.submit(
        sites=sites,
        output_dir=str(fed.work / name),
        env=fed.env,
        overrides=[*RUN_SETTINGS, f"data.root='{fed.work / 'test.npz'}'", *overrides],
    )


@contextlib.contextmanager
def two_site_federation(work: Path) -> Iterator[LocalFederation]:
    """certs/ for 4 sites; site1 and site2 registered and online."""
    try:
        load_fashion_mnist(download=False)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    fed = LocalFederation(work)
    fed.make_certs(4)
    deploy.demo_sites(fed.work, sites=2, per_site=200, label_ratio=0.1, test_samples=300)
    try:
        fed.start_server()
        for site in ("site1", "site2"):
            fed.register(site)
            fed.join(site)
        fed.wait_online(2)
        yield fed
    finally:
        fed.stop()
