"""Flower ServerApp: the library's server loop with Flower messages as the transport.

Round logic (cohort sampling, aggregation, evaluation, outputs) is fedlabel.federation's; this
file only discovers which node holds which partition, sends train messages to the sampled
nodes, and decodes their replies into ClientUpdates."""

from __future__ import annotations

import logging
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedlabel import keys
from fedlabel.algorithms import ClientUpdate
from fedlabel.config import config_from_run_config
from fedlabel.faults import CRASHED, TIMEOUT, ClientFailure
from fedlabel.federation import CohortResult, initial_model, load_dataset, open_recorder, run_federation
from fedlabel.training import Params, resolve_device
from fedlabel.validation import CLIENT, UNDECODABLE, Rejection

log = logging.getLogger("fedlabel.server")
app = ServerApp()

NODE_WAIT_S = 180.0  # nodes start Ray workers, import torch and load data before the first reply


def discover_partitions(grid: Grid, num_clients: int) -> tuple[dict[int, int], list[dict]]:
    """Ask every node for its partition id and data statistics: {partition: node_id}, stats."""
    deadline = time.monotonic() + NODE_WAIT_S
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < num_clients and time.monotonic() < deadline:
        time.sleep(1.0)
        node_ids = list(grid.get_node_ids())
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
    nodes: dict[int, int] = {}
    stats: list[dict] = []
    for reply in grid.send_and_receive(msgs, timeout=NODE_WAIT_S):
        if reply.has_error():
            log.warning("node %s failed the query: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        record = dict(reply.content[keys.STATS])
        nodes[int(record["client_id"])] = reply.metadata.src_node_id
        stats.append(record)
    missing = sorted(set(range(num_clients)) - set(nodes))
    if missing:
        raise RuntimeError(f"no node answered for partition(s) {missing[:10]}{'...' if len(missing) > 10 else ''}; "
                           f"{len(node_ids)} nodes connected, data.num_clients={num_clients}")
    return nodes, sorted(stats, key=lambda s: s["client_id"])


def decode_update(reply: Message, global_params: Params | None = None) -> ClientUpdate:
    """A reply -> ClientUpdate; ``global_params`` (what was sent) turns the parameters that
    Flower's fixedclipping_mod clipped back into a delta (central DP, client-side clipping)."""
    metrics = dict(reply.content[keys.METRICS])
    deltas = {
        name[len(keys.DELTA_PREFIX) :]: record.to_torch_state_dict()
        for name, record in reply.content.array_records.items()
        if name.startswith(keys.DELTA_PREFIX)
    }
    if keys.CLIPPED_PARAMS in reply.content.array_records:  # central DP clipped by fixedclipping_mod
        clipped = reply.content[keys.CLIPPED_PARAMS].to_torch_state_dict()
        deltas["model"] = {k: clipped[k] - global_params[k].cpu() for k in global_params}
    return ClientUpdate(
        client_id=int(metrics.pop(keys.CLIENT_ID)),
        deltas=deltas,
        weight=float(metrics.pop(keys.WEIGHT)),
        metrics={k: v for k, v in metrics.items() if k != "num-examples"},
    )


def collect_replies(replies: list[Message], cohort: list[int], nodes: dict[int, int], *, deadline_s: float,
                    global_params: Params | None = None) -> list[CohortResult]:  # fmt: skip
    """One result per sampled client: its decoded update, a failure (error reply, or no reply
    before the deadline), or a rejection (a reply that cannot be decoded, or that claims to come
    from another client). Never raises on what a client sent."""
    client_of = {node: cid for cid, node in nodes.items()}
    results: list[CohortResult] = []
    for reply in replies:
        cid = client_of.get(reply.metadata.src_node_id, -1)
        if reply.has_error():
            last_line = (str(reply.error.reason).strip().splitlines() or [""])[-1]  # after Flower's traceback
            results.append(ClientFailure(cid, CRASHED, last_line[-300:]))
            continue
        try:
            update = decode_update(reply, global_params)
        except Exception as err:  # noqa: BLE001 - whatever a client sent, the server carries on
            results.append(Rejection(cid, UNDECODABLE, f"{type(err).__name__}: {err}"[:300]))
            continue
        if update.client_id != cid:
            results.append(Rejection(cid, CLIENT, f"the node of client {cid} sent an update as client {update.client_id}"))
        else:
            results.append(update)
    heard = {r.client_id for r in results}
    waited = f"no reply within faults.round_deadline_s={deadline_s:g} s"
    return results + [ClientFailure(cid, TIMEOUT, waited) for cid in cohort if cid not in heard]


def encode_extras(extras: dict) -> dict[str, ArrayRecord]:
    """A client's extras (Algorithm.client_payload) as ArrayRecords named EXTRA_PREFIX + name."""
    return {
        keys.EXTRA_PREFIX + name: ArrayRecord(torch_state_dict={k: v.cpu() for k, v in arrays.items()})
        for name, arrays in extras.items()
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(context.run_config)
    device = resolve_device(cfg.device)
    dataset = load_dataset(cfg)
    model, params = initial_model(
        cfg, in_channels=dataset.in_channels, num_classes=dataset.num_classes, image_size=dataset.image_size
    )
    recorder = open_recorder(cfg, progress=False)
    try:
        nodes, stats = discover_partitions(grid, cfg.data.num_clients)
    except Exception as err:
        recorder.finish(error=f"{type(err).__name__}: {err}")
        raise
    recorder.write_json("clients.json", stats)

    def train_cohort(rnd: int, cohort: list[int], global_params: Params, extras: dict) -> list[CohortResult]:
        arrays = ArrayRecord(torch_state_dict={k: v.cpu() for k, v in global_params.items()})
        config = {keys.ROUND: rnd}
        if cfg.privacy.name == "central_dp" and cfg.privacy.clipping == "client":
            config[KEY_CLIPPING_NORM] = cfg.privacy.max_grad_norm  # as Flower's ClientSide wrapper sends it
        msgs = [
            Message(
                RecordDict({keys.ARRAYS: arrays, keys.CONFIG: ConfigRecord(config), **encode_extras(extras.get(cid, {}))}),
                dst_node_id=nodes[cid],
                message_type=MessageType.TRAIN,
            )
            for cid in cohort
        ]
        deadline = cfg.faults.round_deadline_s
        replies = list(grid.send_and_receive(msgs, timeout=deadline if deadline > 0 else None))
        return collect_replies(replies, cohort, nodes, deadline_s=deadline, global_params=global_params)

    run_federation(
        cfg,
        model=model,
        params=params,
        test_images=dataset.test_images,
        test_labels=dataset.test_labels,
        train_cohort=train_cohort,
        recorder=recorder,
        device=device,
        client_sizes={int(s["client_id"]): int(s["num_labeled"]) + int(s["num_unlabeled"]) for s in stats},
    )
