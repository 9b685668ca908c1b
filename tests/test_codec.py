"""server/codec.py: every message between the apps survives encode -> wire -> decode with
its content equal, tensors bitwise equal and dtypes kept; decoders raise on what they cannot
read."""

import math

import pytest
import torch
from flwr.app import Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedlabel import keys
from fedlabel.algorithms import ClientUpdate
from server import codec

SHAPE = codec.Shape(in_channels=3, num_classes=10, image_size=32)


def _wire(content: RecordDict) -> RecordDict:
    """What the other side receives: the content through Flower's protobuf serialization."""
    return recorddict_from_proto(recorddict_to_proto(content))


def _params(seed: int) -> dict[str, torch.Tensor]:
    """One tensor per dtype a state dict may hold, floats with inf, nan and -0.0 in them."""
    g = torch.Generator().manual_seed(seed)
    floats = torch.randn(4, 3, generator=g)
    floats[0, :3] = torch.tensor([math.inf, math.nan, -0.0])
    return {
        "conv.weight": floats,
        "conv.bias": torch.randn(5, generator=g, dtype=torch.float64),
        "half": torch.randn(2, 2, generator=g).half(),
        "norm.num_batches_tracked": torch.tensor(7),
        "int32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "uint8": torch.arange(4, dtype=torch.uint8),
        "mask": torch.tensor([True, False]),
        "columns": torch.randn(3, 4, generator=g).t(),  # not contiguous
    }


def _assert_bitwise(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
        assert got[k].numpy().tobytes() == w.contiguous().numpy().tobytes(), k


def test_query_request():
    request = codec.decode_request(_wire(codec.encode_query(SHAPE)))
    assert request == codec.Request(SHAPE) and request.round == request.client_id == 0
    assert request.clipping_norm is None


EXTRAS = {"helpers": _params(2), "psi": {"w": torch.ones(3)}}


@pytest.mark.parametrize("norm", [None, 0.75])
@pytest.mark.parametrize("extras", [{}, EXTRAS], ids=["no extras", "extras"])
def test_train_message(norm, extras):
    want = codec.Request(SHAPE, round=4, client_id=17, clipping_norm=norm)
    params = _params(1)
    content = _wire(codec.encode_train(want, codec.encode_params(params), extras))
    request, got_params, got_extras = codec.decode_train(content)
    assert request == want and (KEY_CLIPPING_NORM in content[keys.CONFIG]) == (norm is not None)
    _assert_bitwise(got_params, params)
    assert list(got_extras) == list(extras)
    for name, arrays in extras.items():
        _assert_bitwise(got_extras[name], arrays)


def test_train_message_for_fixedclipping_mod_has_one_array_and_one_config_record():
    request = codec.Request(SHAPE, round=1, client_id=0, clipping_norm=1.0)
    content = codec.encode_train(request, codec.encode_params(_params(1)), {})
    assert list(content.array_records) == [keys.ARRAYS]
    assert list(content.config_records) == [keys.CONFIG]


@pytest.mark.parametrize("site", [None, "hospital-a"])
def test_query_answer(site):
    stats = {"client_id": 3, "num_labeled": 20, "labeled_histogram": [5, 15], "ratio": 0.25}
    content = codec.encode_answer({**stats, "unlabeled_histogram": None}, site)
    got_stats, got_site = codec.decode_answer(_wire(content))
    assert got_stats == stats and got_site == site  # None values are left out
    assert all(type(got_stats[k]) is type(v) for k, v in stats.items())


def _update() -> ClientUpdate:
    deltas = {"model": _params(3), "local": {"w": torch.randn(2, 2, dtype=torch.float64)}}
    metrics = {"num_kept": 12, "loss_labeled": 0.125, keys.DP_NOISE_MULTIPLIERS: [0.9, 1.1]}
    metrics[keys.DP_STEPS] = [3, 4]
    return ClientUpdate(client_id=5, deltas=deltas, weight=200.0, metrics=metrics)


def _assert_update(got: ClientUpdate, want: ClientUpdate) -> None:
    assert (got.client_id, got.weight, got.metrics) == (want.client_id, want.weight, want.metrics)
    assert all(type(got.metrics[k]) is type(v) for k, v in want.metrics.items())
    assert list(got.deltas) == list(want.deltas)
    for name, delta in want.deltas.items():
        _assert_bitwise(got.deltas[name], delta)


def test_update_reply():
    update = _update()
    content = _wire(codec.encode_update(update))
    _assert_update(codec.decode_update(content), update)
    assert content[keys.METRICS][codec.NUM_EXAMPLES] == update.weight  # Flower's strategies read it


def test_update_reply_for_client_side_clipping_carries_w_plus_delta():
    """Central DP, client-side clipping: one ArrayRecord, w + Delta under the keys sent (what
    fixedclipping_mod clips); with exactly representable values, the delta comes back bitwise."""
    f64 = torch.float64
    sent = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([0.5, -2.0], dtype=f64)}
    delta = {"w": torch.full((2, 3), -0.25), "b": torch.tensor([1.0, 0.125], dtype=f64)}
    update = ClientUpdate(client_id=1, deltas={"model": delta}, weight=3.0, metrics={"num_kept": 2})
    content = _wire(codec.encode_update(update, sent=sent))
    assert list(content.array_records) == [keys.CLIPPED_PARAMS]
    assert list(content[keys.CLIPPED_PARAMS].keys()) == list(sent)
    _assert_update(codec.decode_update(content, sent), update)


def _error_reply(reason: str) -> Message:
    meta = Metadata(
        run_id=1,
        message_id="",
        src_node_id=1,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    return make_message(meta, error=Error(code=1, reason=reason))


def test_error_reply_reason_is_its_last_line():
    traceback = 'Traceback (most recent call last):\n  File "x.py"\nInjectedCrash: client 2: boom\n'
    assert codec.error_reason(_error_reply(traceback)) == "InjectedCrash: client 2: boom"
    assert codec.error_reason(_error_reply("")) == ""


@pytest.mark.parametrize(
    "content",
    [
        RecordDict(),
        RecordDict({"garbage": MetricRecord({"x": 1.0})}),
        RecordDict({keys.METRICS: MetricRecord({keys.CLIENT_ID: 3})}),  # no weight
        RecordDict({keys.METRICS: MetricRecord({keys.WEIGHT: 3.0})}),  # no client id
        codec.encode_update(_update(), sent=_params(3)),  # clipped, but nothing sent to subtract
    ],
)
def test_undecodable_update_raises(content):
    with pytest.raises(Exception):  # noqa: B017 - the server rejects whatever the decoder raises
        codec.decode_update(content)
