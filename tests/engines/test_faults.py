"""Injected faults: the same clients fail the same way on both engines, the server aggregates
what arrived and summary.json says who took part, who failed and why. On the Flower engine the
faults are real: the ClientApp raises, or sleeps past the server's send_and_receive timeout."""

import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message

import fedlabel
from fedlabel import keys
from fedlabel.checkpoint import load_checkpoint
from fedlabel.config import FaultsConfig
from fedlabel.faults import CRASH, CRASHED, DROPOUT, STRAGGLER, TIMEOUT, draw_fault
from fedlabel.federation import RoundFailed, sample_cohort
from fedlabel.validation import CLIENT, UNDECODABLE
from server.server_app import collect_replies
from tests.engines.conftest import tiny_config

pytestmark = pytest.mark.slow

# Seed 14 with these probabilities, 2 of 4 clients per round, 3 rounds: a crash in round 1, a
# dropout in round 2, a straggler in round 3, each beside a healthy client (so one sleeping client
# never holds back the other on a 2-core machine); test_seed_gives_every_fault_kind checks it.
FAULTS = {"crash_prob": 0.25, "dropout_prob": 0.2, "straggler_prob": 0.2, "round_deadline_s": 12.0}
SEED = 14
ROUNDS = 3


def _faulty_config(tmp_path, engine: str, name: str) -> dict:
    cfg = tiny_config(tmp_path, engine=engine, seed=SEED, name=name)
    cfg.update(rounds=ROUNDS, faults={**cfg["faults"], **FAULTS})
    return cfg


def _expected(seed: int, rnd: int) -> dict[int, str | None]:
    cohort = sample_cohort(seed=seed, round=rnd, num_clients=4, clients_per_round=2)
    return {
        cid: draw_fault(FaultsConfig(**FAULTS), seed=seed, round=rnd, client_id=cid)
        for cid in cohort
    }


def test_seed_gives_every_fault_kind():
    rounds = [sorted(_expected(SEED, r).values(), key=str) for r in range(1, ROUNDS + 1)]
    assert rounds == [[None, CRASH], [None, DROPOUT], [None, STRAGGLER]]


def test_fault_draws_depend_only_on_seed_round_client():
    f = FaultsConfig(crash_prob=0.3, dropout_prob=0.3, round_deadline_s=1.0)
    draws = [draw_fault(f, seed=0, round=r, client_id=c) for r in range(1, 40) for c in range(10)]
    assert draws == [
        draw_fault(f, seed=0, round=r, client_id=c) for r in range(1, 40) for c in range(10)
    ]
    assert abs(draws.count(CRASH) / len(draws) - 0.3) < 0.1 and STRAGGLER not in draws
    assert draws != [
        draw_fault(f, seed=1, round=r, client_id=c) for r in range(1, 40) for c in range(10)
    ]


def _check_fault_records(summary):
    assert summary["status"] == "completed"
    for record in summary["rounds"]:
        faults = _expected(SEED, record["round"])
        assert record["participants"] == sorted(c for c, f in faults.items() if f is None)
        assert record["clients"] == len(record["participants"])
        assert (
            record["failed_clients"]
            == len(record["failed"])
            == sum(f is not None for f in faults.values())
        )
        assert record["rejected_updates"] == 0 and record["rejected"] == []
        seen = {f["client"]: f["reason"] for f in record["failed"]}
        assert seen == {
            c: CRASHED if f == CRASH else TIMEOUT for c, f in faults.items() if f is not None
        }


def test_inprocess_faults(tmp_path):
    summary = fedlabel.run(_faulty_config(tmp_path, "inprocess", "inproc"), progress=False)
    _check_fault_records(summary)


def test_min_clients_fails_the_run_and_keeps_the_last_checkpoint(tmp_path):
    cfg = tiny_config(
        tmp_path, seed=3, name="strict"
    )  # seed 3: no fault in round 1, a dropout in round 2
    cfg["faults"].update(FAULTS, min_clients=2)
    with pytest.raises(RoundFailed, match=r"round 2: 1 of 2 .*faults\.min_clients=2.*timeout"):
        fedlabel.run(cfg, progress=False)
    out = tmp_path / "strict"
    assert load_checkpoint(out)["round"] == 1 and not (out / "model.pt").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["status"] == "failed"
        and "RoundFailed" in summary["error"]
        and len(summary["rounds"]) == 1
    )


def test_flower_faults_are_real_resume_works_and_both_match_inprocess(tmp_path):
    """Flower: rounds 1-2, then resumed from the checkpoint for round 3, equals the
    uninterrupted in-process run (same participants and failures; same accuracies at one thread)."""
    cfg = _faulty_config(tmp_path, "flower", "flower")
    fedlabel.run({**cfg, "rounds": 2}, progress=False)
    flower = fedlabel.run({**cfg, "resume": True}, progress=False)
    _check_fault_records(flower)
    crash = next(f for f in flower["rounds"][0]["failed"] if f["reason"] == CRASHED)
    assert (
        "injected crash in round 1" in crash["detail"]
    )  # Flower's error reply to the ClientApp's exception
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Flower's workers train with one thread (see test_flower.py)
    try:
        inproc = fedlabel.run(_faulty_config(tmp_path, "inprocess", "inproc"), progress=False)
    finally:
        torch.set_num_threads(threads)
    for f, i in zip(flower["rounds"], inproc["rounds"], strict=True):
        assert f["participants"] == i["participants"] and f["accuracy"] == i["accuracy"]
        assert [(x["client"], x["reason"]) for x in f["failed"]] == [
            (x["client"], x["reason"]) for x in i["failed"]
        ]


# --- decoding Flower replies: the server survives anything a client sends -------------------


def _reply(node: int, content: RecordDict | None = None, error: Error | None = None) -> Message:
    meta = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    return make_message(meta, content=content, error=error)


def _update_content(cid: int) -> RecordDict:
    return RecordDict(
        {
            keys.DELTA_PREFIX + "model": ArrayRecord(torch_state_dict={"w": torch.zeros(2)}),
            keys.METRICS: MetricRecord(
                {keys.CLIENT_ID: cid, keys.WEIGHT: 3.0, "num-examples": 3.0}
            ),
        }
    )


def test_collect_replies_sorts_every_kind_of_reply():
    nodes = {0: 100, 1: 101, 2: 102, 3: 103, 4: 104, 5: 105}
    replies = [
        _reply(100, _update_content(0)),
        _reply(101, error=Error(code=1, reason="ClientAppException: boom")),
        _reply(102, RecordDict({"garbage": MetricRecord({"x": math.pi})})),  # no metrics, no deltas
        _reply(103, RecordDict({keys.METRICS: MetricRecord({keys.CLIENT_ID: 3})})),  # no weight
        _reply(104, _update_content(0)),  # claims to be client 0
    ]
    results = collect_replies(replies, [0, 1, 2, 3, 4, 5], nodes, deadline_s=5.0)
    kinds = {r.client_id: (type(r).__name__, getattr(r, "reason", None)) for r in results}
    assert kinds == {
        0: ("ClientUpdate", None),
        1: ("ClientFailure", CRASHED),
        2: ("Rejection", UNDECODABLE),
        3: ("Rejection", UNDECODABLE),
        4: ("Rejection", CLIENT),
        5: ("ClientFailure", TIMEOUT),
    }
    assert torch.equal(results[0].deltas["model"]["w"], torch.zeros(2)) and results[0].weight == 3.0
