"""Flower ServerApp: the library's server loop with Flower messages as the transport.

Round logic (cohort sampling, aggregation, evaluation, outputs) is fedlabel.federation's; this
file only discovers which node holds which client (a simulated partition, or a real site that
reads its own data), sends train messages to the sampled nodes, and sorts their replies into
updates, failures and rejections; server/codec.py encodes and decodes the messages. Central
evaluation is the server's: the test split of data.name/data.root and the validation set that
data.val_fraction holds out of its training split (in simulation the ClientApps hold the same
samples out of every partition). In a deployment, data.name/data.root name the server's own file:
its test split and the data.val_fraction share of its training split are the server's test and
validation sets, and the rest of its training split is unused; the sites' data never comes from
this file."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter

from flwr.app import Context, Message, MessageType
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid

from fedlabel.config import config_from_run_config
from fedlabel.errors import check
from fedlabel.faults import CRASHED, TIMEOUT, ClientFailure
from fedlabel.federation import (
    CohortResult,
    initial_model,
    load_dataset,
    load_test,
    load_validation,
    open_recorder,
    run_federation,
)
from fedlabel.lifecycle import claim_output_dir
from fedlabel.privacy.noise import deployed
from fedlabel.report import round_line
from fedlabel.training import Params, resolve_device
from fedlabel.validation import CLIENT, UNDECODABLE, Rejection
from server import codec

log = logging.getLogger("fedlabel.server")
app = ServerApp()

NODE_WAIT_S = 180.0  # nodes start Ray workers, import torch and load data before the first reply
REPLY_POLL_S = 0.2  # deployment: how often the ServerApp asks the SuperLink for replies


def say(text: str) -> None:
    """A line in Flower's log stream (what `flwr run --stream` and `flwr log` show); the Flower
    engine shows the lines before round 1 as start-up phases."""
    flwr_log(logging.INFO, "fedlabel: %s", text)


class PollingGrid:
    """A deployment Grid whose send_and_receive polls for replies every REPLY_POLL_S seconds
    instead of Flower 1.42's fixed 3 s (the simulation grid already polls every 0.1 s). Every
    other method is the wrapped grid's."""

    def __init__(self, grid: Grid):
        self._grid = grid

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        pending = set(self._grid.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else float("inf"))
        replies: list[Message] = []
        while pending:
            for reply in list(self._grid.pull_messages(list(pending))):
                replies.append(reply)
                pending.discard(reply.metadata.reply_to_message_id)
            if not pending or time.monotonic() >= end:
                break
            time.sleep(REPLY_POLL_S)
        return replies


def discover_clients(
    grid: Grid, num_clients: int, shape: codec.Shape
) -> tuple[dict[int, int], list[dict]]:
    """Ask every connected node which client it is: ({client_id: node_id}, per-client stats).

    Simulation: each node reports its partition id, and every id in 0..num_clients-1 must answer.
    Deployment: each node reports its site name; the server waits for num_clients sites and uses
    all that answer, numbered 0..K-1 in name order (see :func:`assign_client_ids`)."""
    node_ids = list(grid.get_node_ids())
    if (
        isinstance(grid, InMemoryGrid) and len(node_ids) != num_clients
    ):  # simulation: all nodes exist at start
        raise RuntimeError(
            f"the simulation has {len(node_ids)} nodes but data.num_clients={num_clients}: run"
            " with "
            f'--federation-config "num-supernodes={num_clients}" or set'
            f" data.num_clients={len(node_ids)}"
        )
    deadline = time.monotonic() + NODE_WAIT_S
    while len(node_ids) < num_clients and time.monotonic() < deadline:
        say(f"waiting for sites: {len(node_ids)} of data.num_clients={num_clients} connected")
        time.sleep(1.0)
        node_ids = list(grid.get_node_ids())
    say(f"asking {len(node_ids)} nodes which client they are (each loads its data)")
    msgs = [
        Message(codec.encode_query(shape), dst_node_id=n, message_type=MessageType.QUERY)
        for n in node_ids
    ]
    answers: dict[int, dict] = {}
    sites: dict[int, str] = {}
    failed: Counter[str] = Counter()  # the same failure on every node is reported once
    for reply in grid.send_and_receive(msgs, timeout=NODE_WAIT_S):
        node = reply.metadata.src_node_id
        if reply.has_error():
            failed[codec.error_reason(reply)] += 1
            continue
        answers[node], site = codec.decode_answer(reply.content)
        if site is not None:
            sites[node] = site
    failures = [f"{reason} ({n} of {len(node_ids)} nodes)" for reason, n in failed.items()]
    if failures and not answers:
        raise RuntimeError(f"every node failed the query: {'; '.join(failures)}")
    if sites:
        return _deployed_sites(answers, sites, num_clients, failures)
    nodes = {int(record["client_id"]): node for node, record in answers.items()}
    missing = sorted(set(range(num_clients)) - set(nodes))
    if missing:
        raise RuntimeError(
            f"no node answered for partition(s) {missing[:10]}{'...' if len(missing) > 10 else ''};"
            f" {len(node_ids)} nodes connected, data.num_clients={num_clients}"
            + (f"; failures: {'; '.join(failures)}" if failures else "")
        )
    return nodes, sorted(answers.values(), key=lambda s: s["client_id"])


def assign_client_ids(sites: dict[int, str]) -> dict[int, int]:
    """{node_id: site name} -> {client_id: node_id}, client ids 0..K-1 in site-name order, so a
    run's client ids (and with them its seeded sampling) depend on which sites took part, not on
    the order in which they connected."""
    names = sorted(sites.values())
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(
            f"several nodes report the same site name {', '.join(map(repr, duplicates))}; "
            "give each SuperNode its own site-id in its node config"
        )
    by_name = {name: node for node, name in sites.items()}
    return {cid: by_name[name] for cid, name in enumerate(names)}


def _deployed_sites(
    answers: dict[int, dict], sites: dict[int, str], num_clients: int, failures: list[str]
):
    if len(sites) != len(answers):
        raise RuntimeError(
            "some nodes report a site directory and others a simulated partition; "
            "a run is either simulated or deployed"
        )
    if len(sites) < num_clients:
        raise RuntimeError(
            f"{len(sites)} site(s) answered ({', '.join(sorted(sites.values()))}) but the run waits"
            f" for data.num_clients={num_clients}"
            + (f"; failures: {'; '.join(failures)}" if failures else "")
        )
    nodes = assign_client_ids(sites)
    stats = [
        {"client_id": cid, "site": sites[node], **answers[node]} for cid, node in nodes.items()
    ]
    return nodes, stats


def collect_replies(
    replies: list[Message],
    cohort: list[int],
    nodes: dict[int, int],
    *,
    deadline_s: float,
    global_params: Params | None = None,
    sent: dict[str, int] | None = None,
) -> list[CohortResult]:
    """One result per sampled client: its decoded update, a failure (error reply, or no reply
    before the deadline), or a rejection (a reply that cannot be decoded, or that claims to come
    from another client). Never raises on what a client sent. ``sent`` maps the ids of the
    messages sent to their client ids: the SuperLink's own error replies (e.g. "Node Unavailable"
    for a SuperNode whose heartbeats stopped) come from the SuperLink, not from the node."""
    client_of = {node: cid for cid, node in nodes.items()}
    sent = sent or {}
    results: list[CohortResult] = []
    for reply in replies:
        cid = client_of.get(
            reply.metadata.src_node_id, sent.get(reply.metadata.reply_to_message_id, -1)
        )
        if reply.has_error():
            results.append(ClientFailure(cid, CRASHED, codec.error_reason(reply)[-300:]))
            continue
        try:
            update = codec.decode_update(reply.content, global_params)
        except Exception as err:  # noqa: BLE001 - whatever a client sent, the server carries on
            results.append(Rejection(cid, UNDECODABLE, f"{type(err).__name__}: {err}"[:300]))
            continue
        if update.client_id != cid:
            results.append(
                Rejection(
                    cid,
                    CLIENT,
                    f"the node of client {cid} sent an update as client {update.client_id}",
                )
            )
        else:
            results.append(update)
    heard = {r.client_id for r in results}
    waited = f"no reply within faults.round_deadline_s={deadline_s:g} s"
    return results + [ClientFailure(cid, TIMEOUT, waited) for cid in cohort if cid not in heard]


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(context.run_config)
    claim_output_dir(
        cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite
    )  # `flwr run` without fedlabel
    device = resolve_device(cfg.device)
    say("loading the server's test and validation sets")
    dataset = load_dataset(cfg)
    test_images, test_labels = load_test(cfg, dataset)
    val_images, val_labels = load_validation(cfg, dataset)
    model, params = initial_model(
        cfg,
        in_channels=dataset.in_channels,
        num_classes=dataset.num_classes,
        image_size=dataset.image_size,
    )
    recorder = open_recorder(
        cfg, progress=False, on_round=lambda record: say(round_line(record, cfg.rounds))
    )
    shape = codec.Shape(dataset.in_channels, dataset.num_classes, dataset.image_size)
    try:
        nodes, stats = discover_clients(grid, cfg.data.num_clients, shape)
        if "site" in stats[0]:  # deployment: the federation is the sites that answered
            grid = PollingGrid(grid)
            cfg = dataclasses.replace(
                cfg, data=dataclasses.replace(cfg.data, num_clients=len(nodes))
            )
            cfg = deployed(
                cfg
            )  # central-DP noise from the OS's entropy; summary.json's privacy.noise_source says so
            check(
                cfg.clients_per_round <= len(nodes),
                "clients_per_round",
                f"{cfg.clients_per_round} is more than the {len(nodes)} site(s) that answered",
            )
    except Exception as err:
        recorder.finish(error=f"{type(err).__name__}: {err}")
        raise
    recorder.write_json("clients.json", stats)
    say(f"{len(nodes)} clients ready; round 1 of {cfg.rounds} starts")

    def train_cohort(
        rnd: int, cohort: list[int], global_params: Params, extras: dict
    ) -> list[CohortResult]:
        arrays = codec.encode_params(global_params)
        client_clips = cfg.privacy.name == "central_dp" and cfg.privacy.clipping == "client"
        norm = cfg.privacy.max_grad_norm if client_clips else None
        msgs = [
            Message(
                codec.encode_train(
                    codec.Request(shape, round=rnd, client_id=cid, clipping_norm=norm),
                    arrays,
                    extras.get(cid, {}),
                ),
                dst_node_id=nodes[cid],
                message_type=MessageType.TRAIN,
            )
            for cid in cohort
        ]
        deadline = cfg.faults.round_deadline_s
        replies = list(grid.send_and_receive(msgs, timeout=deadline if deadline > 0 else None))
        sent = {
            msg.metadata.message_id: cid for msg, cid in zip(msgs, cohort)
        }  # ids are set when pushed
        return collect_replies(
            replies, cohort, nodes, deadline_s=deadline, global_params=global_params, sent=sent
        )

    run_federation(
        cfg,
        model=model,
        params=params,
        test_images=test_images,
        test_labels=test_labels,
        val_images=val_images,
        val_labels=val_labels,
        train_cohort=train_cohort,
        recorder=recorder,
        device=device,
        client_sizes={
            int(s["client_id"]): int(s["num_labeled"]) + int(s["num_unlabeled"]) for s in stats
        },
    )
