"""``engine=inprocess engine.workers=N``: worker processes, each with one resident model.

Every client's tensors are slices of a few tensors in shared memory, so no worker copies any
client's data, and each worker builds its model skeleton and algorithm once. Each round the
cohort's clients are sorted by work (the samples their SGD steps and inference process, the
largest first) and each goes to the worker with the least work so far; a worker trains its clients
one after another
with the sequential engine's code and the clients' own generators and sends back their updates.
The server loop aggregates them in client-id order as always, so a run with N workers equals the
one-process run exactly when every worker uses that run's torch thread count; the workers share
the process's threads evenly (at least one each).

Updates come back one per client rather than summed inside the workers: an algorithm's own
aggregation (robust rules, split deltas, helper selection) may need each client's delta, and a
delta of the models here is at most a few MB, pickled by value through a pipe.
"""

from __future__ import annotations

import itertools
import pickle
import traceback

import torch
import torch.multiprocessing as mp

from fedlabel.algorithms import Algorithm, ClientUpdate, build_algorithm
from fedlabel.config import Config
from fedlabel.data import ClientData, FederatedData
from fedlabel.federation import client_generator
from fedlabel.models import build_model
from fedlabel.privacy.mechanism import private_client_update
from fedlabel.training import Params, resolve_device

_FIELDS = ("labeled_images", "labeled_labels", "unlabeled_images", "unlabeled_true_labels")


class SharedClients:
    """All clients' tensors concatenated per field in shared memory; ``client(i)`` is views."""

    def __init__(self, clients: list[ClientData]) -> None:
        self.tensors: dict[str, torch.Tensor | None] = {}
        self.offsets: dict[str, list[int]] = {}
        for f in _FIELDS:
            parts = [getattr(c, f) for c in clients]
            if any(p is None for p in parts):
                self.tensors[f] = None
                continue
            self.tensors[f] = torch.cat(parts).share_memory_()
            self.offsets[f] = list(itertools.accumulate([0, *(len(p) for p in parts)]))
        self.num_clients = len(clients)

    def client(self, i: int) -> ClientData:
        views = {
            f: None if t is None else t[self.offsets[f][i] : self.offsets[f][i + 1]]
            for f, t in self.tensors.items()
        }
        return ClientData(client_id=i, **views)


def assign_by_work(work: dict[int, float], workers: int) -> list[list[int]]:
    """Clients sorted by work (largest first, then id) to the least-loaded worker each."""
    loads = [0.0] * workers
    parts: list[list[int]] = [[] for _ in range(workers)]
    for cid in sorted(work, key=lambda c: (-work[c], c)):
        j = min(range(workers), key=lambda w: (loads[w], w))
        parts[j].append(cid)
        loads[j] += work[cid]
    return parts


def _serve(
    conn, cfg: Config, shared: SharedClients, shape: tuple[int, int, int], threads: int
) -> None:
    """A worker: resident model and algorithm; trains the clients it is sent until told to stop."""
    torch.set_num_threads(threads)
    clients = [shared.client(i) for i in range(shared.num_clients)]
    in_channels, num_classes, image_size = shape
    model = build_model(
        cfg.model.name,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        activation=cfg.model.activation,
    )
    algorithm = build_algorithm(cfg.algorithm)
    device = resolve_device(cfg.device)
    while (msg := _recv(conn)) is not None:
        rnd, ids, params, extras = msg
        try:
            _send(
                conn,
                [
                    private_client_update(
                        algorithm,
                        cfg.privacy,
                        model,
                        params,
                        clients[cid],
                        generator=client_generator(seed=cfg.seed, round=rnd, client_id=cid),
                        device=device,
                        extras=extras.get(cid),
                    )
                    for cid in ids
                ],
            )
        except Exception:  # noqa: BLE001 - reported to the server loop, which raises it
            _send(
                conn,
                RuntimeError(
                    f"engine.workers: a worker failed in round {rnd}:\n{traceback.format_exc()}"
                ),
            )


def _send(conn, obj) -> None:
    """Plain pickling: tensors travel by value. (Connection.send would move every tensor into
    a shared-memory segment of its own, which costs more than copying a model's few MB.)"""
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn):
    return pickle.loads(conn.recv_bytes())


class WorkerPool:
    """The round's client training (a TrainCohort) spread over cfg.engine.workers processes."""

    def __init__(
        self, cfg: Config, model, algorithm: Algorithm, fed: FederatedData, device: torch.device
    ) -> None:
        n = cfg.engine.workers
        ctx = mp.get_context("spawn")  # no fork of a process whose OpenMP threads already run
        shared = SharedClients(fed.clients)
        threads = max(1, torch.get_num_threads() // n)
        self.work = {c.client_id: algorithm.client_work(c) for c in fed.clients}
        self._conns, self._procs = [], []
        for _ in range(n):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_serve,
                daemon=True,
                args=(
                    theirs,
                    cfg,
                    shared,
                    (fed.in_channels, fed.num_classes, fed.image_size),
                    threads,
                ),
            )
            proc.start()
            theirs.close()
            self._conns.append(ours)
            self._procs.append(proc)

    def __call__(
        self, rnd: int, cohort: list[int], global_params: Params, extras: dict
    ) -> list[ClientUpdate]:
        parts = assign_by_work({c: self.work[c] for c in cohort}, len(self._conns))
        for conn, ids in zip(self._conns, parts):
            _send(conn, (rnd, ids, global_params, {c: extras[c] for c in ids if c in extras}))
        replies = [_recv(conn) for conn in self._conns]
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return sorted((u for reply in replies for u in reply), key=lambda u: u.client_id)

    def close(self) -> None:
        for conn in self._conns:
            try:
                _send(conn, None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
