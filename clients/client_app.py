"""Flower ClientApp: decode the message, call the library's client update, encode the reply
(server/codec.py), with injected faults (faults.*) as a mod around the train handler.

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

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
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
from server import codec

app = ClientApp()


@functools.lru_cache(maxsize=2)
def _federated(data: DataConfig, seed: int) -> FederatedData:
    return load_federated(Config(data=data, seed=seed))


@functools.lru_cache(maxsize=2)
def _model(
    name: str, activation: str, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """A resident model skeleton per worker process; its parameters come with each message."""
    return build_model(
        name,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        activation=activation,
    )


@functools.lru_cache(maxsize=2)
def _site(
    site_dir: str, client_id: int, in_channels: int, image_size: int, num_classes: int
) -> ClientData:
    return load_site(
        site_dir,
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        client_id=client_id,
    )


def _client_id(request: codec.Request, context: Context) -> int:
    """A deployed site's client id is the server's (in the request); a simulated node's, its
    partition id."""
    if keys.SITE_DIR in context.node_config:
        return request.client_id
    return int(context.node_config[keys.PARTITION_ID])


def _setup(msg: Message, context: Context) -> tuple[Config, ClientData, codec.Shape]:
    """(config, this client's data, the model input)."""
    cfg = config_from_run_config(context.run_config)
    request = codec.decode_request(msg.content)
    cid = _client_id(request, context)
    if keys.SITE_DIR in context.node_config:
        cfg = deployed(
            cfg
        )  # DP noise from the site's OS entropy, whatever the server's run config says
        channels, classes, size = request.shape
        site = _site(str(context.node_config[keys.SITE_DIR]), cid, channels, size, classes)
        return cfg, site, request.shape
    fed = _federated(cfg.data, cfg.seed)
    if not 0 <= cid < len(fed.clients):
        raise ValueError(
            f"node_config {keys.PARTITION_ID}={cid} is outside 0..{len(fed.clients) - 1}"
        )
    return cfg, fed.clients[cid], codec.Shape(fed.in_channels, fed.num_classes, fed.image_size)


def site_name(node_config) -> str:
    """A deployed site's name: node config site-id, else the name of its site directory."""
    name = (
        node_config.get(keys.SITE_ID)
        or Path(str(node_config[keys.SITE_DIR])).expanduser().resolve().name
    )
    return str(name)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this node's partition id (simulation) or site name (deployment) and its data
    statistics (no raw data leaves)."""
    _, client, shape = _setup(msg, context)
    stats = client.stats(shape.num_classes)
    if keys.SITE_DIR not in context.node_config:
        return Message(codec.encode_answer(stats), reply_to=msg)
    del stats["client_id"]  # the server assigns it
    return Message(codec.encode_answer(stats, site=site_name(context.node_config)), reply_to=msg)


def fault_injection_mod(msg: Message, context: Context, call_next) -> Message:
    """faults.*, made real (the draw is fedlabel.faults'): a crash raises (Flower replies with the
    error), a dropout stays silent until past the server's deadline and then raises, a straggler
    replies after the deadline."""
    started = time.monotonic()
    cfg = config_from_run_config(context.run_config)
    request = codec.decode_request(msg.content)
    rnd, cid = request.round, _client_id(request, context)
    fault = draw_fault(cfg.faults, seed=cfg.seed, round=rnd, client_id=cid)
    late_at = started + cfg.faults.round_deadline_s + LATE_BY_S  # past the server's deadline
    if fault == CRASH:
        raise InjectedCrash(f"client {cid}: injected crash in round {rnd} (faults.crash_prob)")
    if fault == DROPOUT:  # the late error reply is never read
        time.sleep(max(0.0, late_at - time.monotonic()))
        raise InjectedCrash(f"client {cid}: dropped out of round {rnd} (faults.dropout_prob)")
    reply = call_next(msg, context)
    if fault == STRAGGLER:
        time.sleep(max(0.0, late_at - time.monotonic()))
    return reply


def central_dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Central DP with client-side clipping: Flower's fixedclipping_mod clips the reply when the
    server asks for it (it sends the clipping norm, as Flower's ClientSide wrapper does)."""
    if codec.decode_request(msg.content).clipping_norm is not None:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[fault_injection_mod, central_dp_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    """Train this client from the global parameters; reply with its update."""
    cfg, client, shape = _setup(msg, context)
    request, params, extras = codec.decode_train(msg.content)
    device = resolve_device(cfg.device)
    model = _model(cfg.model.name, cfg.model.activation, *shape)
    global_params = {k: v.to(device) for k, v in params.items()}
    extras = {name: {k: v.to(device) for k, v in arrays.items()} for name, arrays in extras.items()}
    update = private_client_update(
        build_algorithm(cfg.algorithm),
        cfg.privacy,
        model,
        global_params,
        client,
        generator=client_generator(seed=cfg.seed, round=request.round, client_id=client.client_id),
        device=device,
        clip=False,  # client-side central DP clipping is fixedclipping_mod's
        **({"extras": extras} if extras else {}),
    )
    sent = None if request.clipping_norm is None else global_params  # reply w + Delta, to clip
    return Message(codec.encode_update(update, sent=sent), reply_to=msg)
