"""Flower ClientApp: decode the message, call the library's client update, encode the reply.

In simulation, client data is rebuilt deterministically from (data config, seed) in each worker
process and cached there. In a deployment, the SuperNode's node config names its site directory
(``site-dir``, optionally ``site-id``): the site's own files are read and checked against the
model input the server sends, and the server assigns the client id. Clients keep no state between
rounds (FedLabel restarts both branches from the global model every round), so nothing goes into
Context.state."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from torch import nn

from fedlabel import keys
from fedlabel.algorithms import build_algorithm
from fedlabel.config import Config, DataConfig, config_from_run_config
from fedlabel.data import ClientData, FederatedData, load_site
from fedlabel.faults import CRASH, DROPOUT, LATE_BY_S, STRAGGLER, InjectedCrash, draw_fault
from fedlabel.federation import client_generator, load_federated
from fedlabel.models import build_model
from fedlabel.privacy.mechanism import private_client_update
from fedlabel.privacy.noise import deployed
from fedlabel.training import resolve_device

app = ClientApp()


@functools.lru_cache(maxsize=2)
def _federated(data: DataConfig, seed: int) -> FederatedData:
    return load_federated(Config(data=data, seed=seed))


@functools.lru_cache(maxsize=2)
def _model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A resident model skeleton per worker process; its parameters come with each message."""
    return build_model(name, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


@functools.lru_cache(maxsize=2)
def _site(site_dir: str, client_id: int, in_channels: int, image_size: int, num_classes: int) -> ClientData:
    return load_site(site_dir, in_channels=in_channels, image_size=image_size, num_classes=num_classes, client_id=client_id)


def _setup(msg: Message, context: Context) -> tuple[Config, ClientData, tuple[int, int, int]]:
    """(config, this client's data, (in_channels, num_classes, image_size))."""
    cfg = config_from_run_config(context.run_config)
    if keys.SITE_DIR in context.node_config:
        cfg = deployed(cfg)  # DP noise from the site's OS entropy, whatever the server's run config says
        config = msg.content[keys.CONFIG]
        shape = (int(config[keys.IN_CHANNELS]), int(config[keys.NUM_CLASSES]), int(config[keys.IMAGE_SIZE]))
        cid = int(config.get(keys.CLIENT_ID, 0))  # assigned by the server after the query
        site = _site(str(context.node_config[keys.SITE_DIR]), cid, shape[0], shape[2], shape[1])
        return cfg, site, shape
    fed = _federated(cfg.data, cfg.seed)
    cid = int(context.node_config[keys.PARTITION_ID])
    if not 0 <= cid < len(fed.clients):
        raise ValueError(f"node_config {keys.PARTITION_ID}={cid} is outside 0..{len(fed.clients) - 1}")
    return cfg, fed.clients[cid], (fed.in_channels, fed.num_classes, fed.image_size)


def site_name(node_config) -> str:
    """A deployed site's name: node config site-id, else the name of its site directory."""
    name = node_config.get(keys.SITE_ID) or Path(str(node_config[keys.SITE_DIR])).expanduser().resolve().name
    return str(name)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this node's partition id (simulation) or site name (deployment) and its data
    statistics (no raw data leaves)."""
    _, client, shape = _setup(msg, context)
    stats = {k: v for k, v in client.stats(shape[1]).items() if v is not None}
    content = RecordDict()
    if keys.SITE_DIR in context.node_config:
        del stats["client_id"]  # the server assigns it
        content[keys.SITE] = ConfigRecord({keys.SITE_ID: site_name(context.node_config)})
    content[keys.STATS] = MetricRecord(stats)
    return Message(content, reply_to=msg)


def central_dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Central DP with client-side clipping: Flower's fixedclipping_mod clips the reply when the
    server asks for it (it sends the clipping norm, as Flower's ClientSide wrapper does)."""
    if KEY_CLIPPING_NORM in msg.content[keys.CONFIG]:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[central_dp_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    cfg, client, shape = _setup(msg, context)
    cid = client.client_id
    rnd = int(msg.content[keys.CONFIG][keys.ROUND])
    started = time.monotonic()
    late_at = started + cfg.faults.round_deadline_s + LATE_BY_S  # past the server's deadline
    fault = draw_fault(cfg.faults, seed=cfg.seed, round=rnd, client_id=cid)
    if fault == CRASH:  # Flower turns the exception into an error reply
        raise InjectedCrash(f"client {cid}: injected crash in round {rnd} (faults.crash_prob)")
    if fault == DROPOUT:  # silent until well after the deadline; the late error reply is never read
        time.sleep(late_at - time.monotonic())
        raise InjectedCrash(f"client {cid}: dropped out of round {rnd} (faults.dropout_prob)")
    device = resolve_device(cfg.device)
    model = _model(cfg.model.name, *shape)
    global_params = {k: v.to(device) for k, v in msg.content[keys.ARRAYS].to_torch_state_dict().items()}
    extras = {
        name[len(keys.EXTRA_PREFIX) :]: {k: v.to(device) for k, v in record.to_torch_state_dict().items()}
        for name, record in msg.content.array_records.items()
        if name.startswith(keys.EXTRA_PREFIX)
    }
    update = private_client_update(
        build_algorithm(cfg.algorithm),
        cfg.privacy,
        model,
        global_params,
        client,
        generator=client_generator(seed=cfg.seed, round=rnd, client_id=cid),
        device=device,
        clip=False,  # client-side central DP clipping is fixedclipping_mod's
        **({"extras": extras} if extras else {}),
    )
    if KEY_CLIPPING_NORM in msg.content[keys.CONFIG]:
        # central DP, client-side clipping: fixedclipping_mod clips (reply - sent arrays) in the
        # reply's one ArrayRecord, so the reply carries the parameters w + Delta
        delta = update.deltas["model"]
        arrays = {keys.CLIPPED_PARAMS: {k: global_params[k] + delta[k] for k in global_params}}
    else:
        arrays = {keys.DELTA_PREFIX + name: delta for name, delta in update.deltas.items()}
    content = RecordDict(
        {
            **{name: ArrayRecord(torch_state_dict={k: v.cpu() for k, v in a.items()}) for name, a in arrays.items()},
            keys.METRICS: MetricRecord(
                {keys.CLIENT_ID: cid, keys.WEIGHT: update.weight, "num-examples": update.weight, **update.metrics}
            ),
        }
    )
    if fault == STRAGGLER:
        time.sleep(max(0.0, late_at - time.monotonic()))
    return Message(content, reply_to=msg)
