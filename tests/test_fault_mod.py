"""The ClientApp's fault_injection_mod: the client fedlabel.faults draws to crash raises before it
trains, a dropout raises after the server's deadline without training, a straggler replies after
the deadline, every other client passes straight through (real runs: engines/test_faults.py)."""

import pytest
from flwr.app import Context, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from clients import client_app
from fedlabel.config import FaultsConfig, default_run_config
from fedlabel.faults import CRASH, DROPOUT, LATE_BY_S, STRAGGLER, InjectedCrash, draw_fault
from server import codec

FAULTS = {"crash_prob": 0.25, "dropout_prob": 0.25, "straggler_prob": 0.25, "round_deadline_s": 5.0}


class Clock:
    """time.monotonic and time.sleep of a clock that moves only when slept."""

    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _client_with(kind: str | None) -> tuple[int, int]:
    """(round, client id) of the first client that seed 0 draws ``kind`` for."""
    f = FaultsConfig(**FAULTS)
    cells = ((r, c) for r in range(1, 50) for c in range(10))
    return next((r, c) for r, c in cells if draw_fault(f, seed=0, round=r, client_id=c) == kind)


@pytest.mark.parametrize("kind", [None, CRASH, DROPOUT, STRAGGLER])
def test_fault_injection_mod(monkeypatch, kind):
    clock = Clock()
    monkeypatch.setattr(client_app, "time", clock)
    rnd, cid = _client_with(kind)
    faults = {f"faults.{k}": v for k, v in FAULTS.items()}
    run_config = {**default_run_config(), "seed": 0, **faults}
    node = {"partition-id": cid}
    context = Context(1, 1, node_config=node, state=RecordDict(), run_config=run_config)
    request = codec.Request(codec.Shape(1, 10, 28), round=rnd, client_id=cid)
    meta = Metadata(
        run_id=1,
        message_id="m",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    msg = make_message(meta, content=codec.encode_train(request, codec.encode_params({}), {}))
    trained = []

    def train(msg, context):
        trained.append(cid)
        clock.now += 1.0
        return "reply"

    if kind in (CRASH, DROPOUT):
        with pytest.raises(InjectedCrash, match=f"client {cid}: .* round {rnd}"):
            client_app.fault_injection_mod(msg, context, train)
        assert trained == []
    else:
        assert client_app.fault_injection_mod(msg, context, train) == "reply" and trained == [cid]
    late = clock.now >= 100.0 + FAULTS["round_deadline_s"] + LATE_BY_S
    assert late == (kind in (DROPOUT, STRAGGLER)) and (clock.slept == []) == (kind in (None, CRASH))
