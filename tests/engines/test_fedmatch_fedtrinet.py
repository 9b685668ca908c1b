"""FedMatch and FedTriNet, 2 tiny rounds on both engines (one Flower run each). The Flower run
must match the in-process one round for round, so FedMatch's helper models (and FedTriNet's
schedule) really travel inside the train messages: the clients count the helper models they
received, and nothing but the message carries them to a Flower client process."""

import pytest
import torch

import fedlabel
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

SETTINGS = {
    # helpers every round; round 2's cohort (1, 3) holds client 3, seen in round 1 beside client 2
    "fedmatch": {"helper_interval": 1, "num_helpers": 2},
    # one warm-up round, then pseudo-labels (threshold 0 so that the tiny model produces some)
    "fedtrinet": {"warmup_rounds": 1, "tri_threshold": 0.0},
}


def _config(tmp_path, algorithm: str, engine: str, overrides: list[str] = ()) -> dict:
    cfg = tiny_config(
        tmp_path, engine=engine, algorithm=algorithm, name=engine, overrides=overrides
    )
    cfg["algorithm"].update(SETTINGS[algorithm])
    return cfg


def _inprocess(cfg: dict) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Flower's workers, so the client arithmetic is identical
    try:
        return fedlabel.run(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("algorithm", sorted(SETTINGS))
def test_baseline_runs_on_both_engines_alike(tmp_path, shared_ray, algorithm):
    inproc = _inprocess(_config(tmp_path, algorithm, "inprocess"))
    flower = fedlabel.run(_config(tmp_path, algorithm, "flower", [shared_ray]), progress=False)
    assert inproc["status"] == flower["status"] == "completed"
    assert [r["round"] for r in flower["rounds"]] == [1, 2]
    for f, i in zip(flower["rounds"], inproc["rounds"], strict=True):
        for key in (
            "clients",
            "accuracy",
            "pseudo_label_coverage",
            "pseudo_label_accuracy",
            "helper_models",
        ):
            assert f.get(key) == i.get(key), key
        assert f["loss"] == pytest.approx(i["loss"], rel=1e-5)
    if algorithm == "fedmatch":
        assert [r["helper_models"] for r in flower["rounds"]] == [0, 1]
    else:
        assert flower["rounds"][0]["pseudo_label_coverage"] == 0  # labeled warm-up
        assert flower["rounds"][1]["pseudo_label_coverage"] > 0
    model = torch.load(tmp_path / "flower" / "model.pt")
    assert not any(
        k.startswith(("sigma.", "psi.", "head1.", "head2.")) for k in model
    )  # the evaluated model
