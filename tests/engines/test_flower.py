"""The Flower engine (real SuperLink + Flower simulation runtime on 127.0.0.1) against the
in-process engine on the same tiny config and seed."""

import json

import pytest
import torch

import fedlabel
from fedlabel.engines.flower import FlowerRunError
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

# Both engines run the same client code with the same seeds, sum updates in client-id order and
# evaluate the same way, so with the same torch thread count they do the same arithmetic: Flower's
# Ray workers run clients with one thread, so the in-process side runs with one thread too and the
# per-round accuracies must be equal exactly (docs/performance.md shows 150 of 150 rounds equal on
# the full benchmark). The evaluation itself runs with the ServerApp's default threads; only the
# loss is compared with a tolerance, for its last digits.


def test_flower_engine_matches_inprocess(tmp_path):
    flower = fedlabel.run(tiny_config(tmp_path, engine="flower", name="flower"), progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inproc = fedlabel.run(
            tiny_config(tmp_path, engine="inprocess", name="inproc"), progress=False
        )
    finally:
        torch.set_num_threads(threads)
    assert flower["status"] == "completed"
    assert [r["round"] for r in flower["rounds"]] == [1, 2]
    for f, i in zip(flower["rounds"], inproc["rounds"], strict=True):
        assert f["clients"] == i["clients"] == 2
        for key in (
            "accuracy",
            "pseudo_label_coverage",
            "pseudo_label_accuracy",
            "global_expert_share",
        ):
            assert f[key] == i[key], key
        assert f["loss"] == pytest.approx(i["loss"], rel=1e-5)
        # the ServerApp builds the validation set itself, the ClientApps their partitions
        assert f["val_accuracy"] == i["val_accuracy"]
        assert f["val_loss"] == pytest.approx(i["val_loss"], rel=1e-5)
        assert f["ece"] == pytest.approx(i["ece"], abs=1e-5)
    assert flower["best_val_accuracy"] == inproc["best_val_accuracy"]
    stats = json.loads((tmp_path / "flower" / "clients.json").read_text())
    assert stats == json.loads((tmp_path / "inproc" / "clients.json").read_text())
    assert sum(s["num_labeled"] + s["num_unlabeled"] for s in stats) == 1900  # 5% held out
    assert (tmp_path / "flower" / "reliability.png").stat().st_size > 0


def test_failed_flower_run_is_reported(tmp_path, shared_ray):
    """`flwr run --stream` exits 0 on failure; the engine reads the run's state instead and
    reports the ServerApp's error (here: every client crashes, so round 1 fails)."""
    cfg = tiny_config(tmp_path, engine="flower", name="bad", overrides=[shared_ray])
    cfg["faults"]["crash_prob"] = 1.0
    with pytest.raises(
        FlowerRunError, match=r"finished:failed; last error: round 1: client \d+ failed \(crashed\)"
    ):
        fedlabel.run(cfg, progress=False)
