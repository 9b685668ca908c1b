"""Every message between the ServerApp and the ClientApp, encoded and decoded in one place (both
apps import it: `from server import codec`).

The server queries each node (a query request -> an answer with the node's data statistics),
then sends train messages (the request, the global parameters and the client's extras -> an
update reply). Error replies are Flower's (an exception in the ClientApp, or the SuperLink's own);
:func:`error_reason` reads them. Decoders raise on content they cannot read: the server turns
that into a rejection, whatever a client sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedlabel import keys
from fedlabel.algorithms import ClientUpdate
from fedlabel.training import Params

NUM_EXAMPLES = "num-examples"  # the weight again, under the name Flower's strategies read


class Shape(NamedTuple):
    """The model input the server sends in every request (a site checks its data against it)."""

    in_channels: int
    num_classes: int
    image_size: int


@dataclass(frozen=True)
class Request:
    """The config record of a query (the shape only) or of a train message."""

    shape: Shape
    round: int = 0
    client_id: int = 0  # assigned by the server after the query
    clipping_norm: float | None = None  # central DP, client-side clipping (fixedclipping_mod)


def _arrays(params: Params) -> ArrayRecord:
    return ArrayRecord(torch_state_dict={k: v.cpu() for k, v in params.items()})


def _params(record: ArrayRecord) -> Params:
    return record.to_torch_state_dict()


def _named(content: RecordDict, prefix: str) -> dict[str, Params]:
    """The ArrayRecords named prefix + name, by name."""
    records = content.array_records.items()
    return {name[len(prefix) :]: _params(r) for name, r in records if name.startswith(prefix)}


def _shape(shape: Shape) -> dict[str, int]:
    channels, classes, size = shape
    return {keys.IN_CHANNELS: channels, keys.NUM_CLASSES: classes, keys.IMAGE_SIZE: size}


# --- server -> client -------------------------------------------------------------------------


def encode_query(shape: Shape) -> RecordDict:
    """A query: which client are you, and what data do you hold?"""
    return RecordDict({keys.CONFIG: ConfigRecord(_shape(shape))})


def encode_params(params: Params) -> ArrayRecord:
    """Global parameters for train messages (encoded once a round, shared by the cohort's)."""
    return _arrays(params)


def encode_train(request: Request, params: ArrayRecord, extras: dict[str, Params]) -> RecordDict:
    """A train message: the request, the global parameters (:func:`encode_params`) and the
    client's extras (Algorithm.client_payload), one ArrayRecord each."""
    config = {keys.ROUND: request.round}
    if request.clipping_norm is not None:
        config[KEY_CLIPPING_NORM] = request.clipping_norm  # as Flower's ClientSide wrapper sends it
    config.update({keys.CLIENT_ID: request.client_id, **_shape(request.shape)})
    extra = {keys.EXTRA_PREFIX + name: _arrays(arrays) for name, arrays in extras.items()}
    return RecordDict({keys.ARRAYS: params, keys.CONFIG: ConfigRecord(config), **extra})


def decode_request(content: RecordDict) -> Request:
    """The request of a query or a train message (a query has no round and no client id)."""
    config = content[keys.CONFIG]
    norm = config.get(KEY_CLIPPING_NORM)
    shape = Shape(*(int(config[k]) for k in (keys.IN_CHANNELS, keys.NUM_CLASSES, keys.IMAGE_SIZE)))
    return Request(
        shape=shape,
        round=int(config.get(keys.ROUND, 0)),
        client_id=int(config.get(keys.CLIENT_ID, 0)),
        clipping_norm=None if norm is None else float(norm),
    )


def decode_train(content: RecordDict) -> tuple[Request, Params, dict[str, Params]]:
    """A train message -> (request, global parameters, extras), tensors on the CPU."""
    params = _params(content[keys.ARRAYS])
    return decode_request(content), params, _named(content, keys.EXTRA_PREFIX)


# --- client -> server -------------------------------------------------------------------------


def encode_answer(stats: dict, site: str | None = None) -> RecordDict:
    """A query's answer: the node's data statistics (None values left out) and, from a deployed
    site, its name."""
    content = RecordDict()
    if site is not None:
        content[keys.SITE] = ConfigRecord({keys.SITE_ID: site})
    content[keys.STATS] = MetricRecord({k: v for k, v in stats.items() if v is not None})
    return content


def decode_answer(content: RecordDict) -> tuple[dict, str | None]:
    """A query's answer -> (data statistics, site name or None in simulation)."""
    site = str(content[keys.SITE][keys.SITE_ID]) if keys.SITE in content.config_records else None
    return dict(content[keys.STATS]), site


def encode_update(update: ClientUpdate, sent: Params | None = None) -> RecordDict:
    """An update reply: one ArrayRecord per delta and the metrics. With ``sent`` (central DP,
    client-side clipping), the parameters sent + Delta in the reply's one ArrayRecord instead:
    fixedclipping_mod clips (reply - sent arrays) there."""
    if sent is None:
        arrays = {keys.DELTA_PREFIX + name: delta for name, delta in update.deltas.items()}
    else:
        delta = update.deltas["model"]
        arrays = {keys.CLIPPED_PARAMS: {k: sent[k] + delta[k] for k in sent}}
    weight = update.weight
    metrics = {keys.CLIENT_ID: update.client_id, keys.WEIGHT: weight, NUM_EXAMPLES: weight}
    records = {name: _arrays(a) for name, a in arrays.items()}
    return RecordDict({**records, keys.METRICS: MetricRecord({**metrics, **update.metrics})})


def decode_update(content: RecordDict, sent: Params | None = None) -> ClientUpdate:
    """An update reply -> ClientUpdate; ``sent`` (the global parameters the train message
    carried) turns parameters clipped by fixedclipping_mod back into a delta."""
    metrics = dict(content[keys.METRICS])
    deltas = _named(content, keys.DELTA_PREFIX)
    if keys.CLIPPED_PARAMS in content.array_records:
        clipped = _params(content[keys.CLIPPED_PARAMS])
        deltas["model"] = {k: clipped[k] - sent[k].cpu() for k in sent}
    return ClientUpdate(
        client_id=int(metrics.pop(keys.CLIENT_ID)),
        deltas=deltas,
        weight=float(metrics.pop(keys.WEIGHT)),
        metrics={k: v for k, v in metrics.items() if k != NUM_EXAMPLES},
    )


def error_reason(reply: Message) -> str:
    """An error reply's reason, its last line (after Flower's traceback: the exception)."""
    return (str(reply.error.reason).strip().splitlines() or [""])[-1]
