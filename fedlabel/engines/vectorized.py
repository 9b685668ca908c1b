"""The vectorized engine: the clients of a cohort trained as one batched computation.

A chunk of clients keeps its parameters stacked (``C x ...``); one SGD step of all of them is
one call of ``vmap(grad(loss))`` over ``functional_call``. Clients differ in size, so each step's
batches are padded to the widest and masked: a client's loss is the sum over its own rows
divided by its own batch size, which is the sequential mean. A client with fewer steps (no
labeled data; nothing above FedLabel's threshold) is frozen at the steps it does not take.
FedLabel's thresholds are masks too: the keep mask and the consistency weights of each row.

Randomness equals the sequential engine's: every client's generator (``client_generator``) draws
its batches and augmentation choices in the order the sequential code draws them
(``augment.draw_weak`` / ``draw_strong``), and the drawn choices are then applied to the whole
chunk at once. Results equal ``engine=inprocess`` up to float rounding (batched convolutions add
in another order), not bitwise; a pseudo-label decision within rounding of its threshold could
in principle go the other way.

Client updates of this form: a fixed number of SGD steps on a per-sample loss that is a pure
function of the parameters, the batch and per-row tensors fixed before training (targets,
masks, weights). Batched here: FedAvg and FedProx (the supervised branch, with FedProx's
proximal term) and FedLabel with its expert ablations (labeled branch, expert choice, masked
unlabeled branch). FixMatch and UDA fit the form too (threshold masks on weak/strong views of
the same batches) but are not batched yet; FedMatch and FedTriNet carry extra server state and
per-client payloads. Every algorithm without a batched update trains its clients one after
another with the in-process engine's code, and the run says so.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from fedlabel.algorithms import Algorithm, ClientUpdate
from fedlabel.algorithms.fedavg import FedAvg
from fedlabel.algorithms.fedlabel import ExpertChoice, FedLabel, FedLabelParams, select_experts, unlabeled_loss
from fedlabel.augment import StrongDraws, WeakDraws, apply_strong, apply_weak, draw_strong, draw_weak
from fedlabel.config import Config
from fedlabel.data import ClientData, FederatedData
from fedlabel.engines.inprocess import run_inprocess, sequential_trainer
from fedlabel.federation import TrainCohort, client_generator
from fedlabel.training import Params, SgdConfig, batch_indices, proximal_term, to_float

Stacked = dict[str, Tensor]  # parameter name -> C x (parameter shape)
_LOGIT_CHUNK = 256  # unlabeled samples per client per forward when choosing experts


def run_vectorized(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole simulation in this process with batched cohorts; returns the summary."""
    return run_inprocess(cfg, progress=progress, trainer=vectorized_trainer)


def batched(algorithm: Algorithm) -> bool:
    """Whether the algorithm's client update is one this engine batches: FedAvg's or FedLabel's
    own, under any of their names (presets change parameters such as FedProx's mu, not the update
    or the protocol)."""
    kind = type(algorithm)
    own_update = (isinstance(algorithm, FedAvg) and kind.client_update is FedAvg.client_update) or (
        isinstance(algorithm, FedLabel) and kind.client_update is FedLabel.client_update
    )
    plain_protocol = all(getattr(kind, m) is getattr(Algorithm, m) for m in ("init_global", "client_payload", "eval_params"))
    return own_update and plain_protocol


def vectorized_trainer(cfg: Config, model: nn.Module, algorithm: Algorithm, fed: FederatedData, device: torch.device) -> TrainCohort:
    if not batched(algorithm) or cfg.privacy.name != "none":
        print(
            f"engine=vectorized: algorithm {algorithm.params.name!r} with privacy={cfg.privacy.name} has no batched client "
            "update here; its clients train one after another as with engine=inprocess",
            file=sys.stderr,
        )
        return sequential_trainer(cfg, model, algorithm, fed, device)
    cohort_trainer = CohortTrainer(model, algorithm, fed, device=device, chunk_clients=cfg.engine.chunk_clients)

    def train_cohort(rnd: int, cohort: list[int], global_params: Params, extras: dict) -> list[ClientUpdate]:
        size = cohort_trainer.chunk_size(len(cohort))
        updates: list[ClientUpdate] = []
        for start in range(0, len(cohort), size):
            ids = cohort[start : start + size]
            gens = [client_generator(seed=cfg.seed, round=rnd, client_id=cid) for cid in ids]
            updates += cohort_trainer.train([fed.clients[cid] for cid in ids], global_params, gens)
        return updates

    return train_cohort


class _Images:
    """One kind of client images (labeled or unlabeled) of every client in one device tensor."""

    def __init__(self, images: list[Tensor], labels: list[Tensor | None], device: torch.device) -> None:
        sizes = [len(x) for x in images]
        self.offsets = list(itertools.accumulate([0, *sizes[:-1]]))
        self.images = torch.cat(images).to(device)
        self.labels = None if any(y is None for y in labels) else torch.cat(labels).to(device)


def _padded(batches: list[list[Tensor]], steps: int) -> tuple[Tensor, Tensor, int]:
    """Per-client lists of index batches -> (C x steps x width indices, bool mask, width)."""
    width = max((len(b) for bs in batches for b in bs), default=1)
    index = torch.zeros(len(batches), steps, width, dtype=torch.long)
    mask = torch.zeros(len(batches), steps, width, dtype=torch.bool)
    for c, bs in enumerate(batches):
        for t, b in enumerate(bs):
            index[c, t, : len(b)] = b
            mask[c, t, : len(b)] = True
    return index, mask, width


class CohortTrainer:
    """Batched client updates for the clients of one chunk (see the module docstring)."""

    def __init__(self, model: nn.Module, algorithm: Algorithm, fed: FederatedData, *, device: torch.device, chunk_clients: int) -> None:
        self.model, self.algorithm, self.device = model, algorithm, device
        if device.type == "cuda":
            # vmap turns the cohort's convolutions into grouped convolutions (one group per
            # client), for which cuDNN's default algorithm choice can be far from the fastest;
            # the shapes repeat every step, so autotuning them once pays off
            torch.backends.cudnn.benchmark = True
        self.p = algorithm.params
        self.sgd: SgdConfig = self.p.sgd()
        clients = fed.clients
        self.labeled = _Images([c.labeled_images for c in clients], [c.labeled_labels for c in clients], device)
        self.unlabeled = _Images([c.unlabeled_images for c in clients], [c.unlabeled_true_labels for c in clients], device)
        self.sample_shape = tuple(fed.clients[0].labeled_images.shape[1:])
        self.chunk_clients = chunk_clients
        self._per_client_bytes: int | None = None

        mu = algorithm.params.mu if isinstance(algorithm, FedAvg) else 0.0

        def labeled_loss(params: Params, x: Tensor, y: Tensor, mask: Tensor, count: Tensor, center: Params):
            ce = F.cross_entropy(functional_call(model, params, (x,)), y, reduction="none")
            loss = (ce * mask).sum() / count.clamp_min(1)
            objective = loss + proximal_term(params, center, mu=mu) if mu else loss  # FedProx, as in sgd_train
            return objective, loss

        self._labeled_step = vmap(grad_and_value(labeled_loss, has_aux=True), in_dims=(0, 0, 0, 0, 0, None))
        self._logits = vmap(lambda params, x: functional_call(model, params, (x,)))
        if isinstance(self.p, FedLabelParams):
            p: FedLabelParams = self.p

            def unl_loss(params: Params, strong: Tensor, clean: Tensor, pseudo: Tensor, keep: Tensor, weight: Tensor,
                         target: Tensor, count: Tensor) -> Tensor:  # fmt: skip
                if p.kl_input == "strong":
                    student = student_kl = functional_call(model, params, (strong,))
                else:
                    both = functional_call(model, params, (torch.cat([strong, clean]),))
                    student, student_kl = both[: len(strong)], both[len(strong) :]
                choice = ExpertChoice(pseudo, keep, keep, weight, target, keep)  # the fields unlabeled_loss reads
                # unlabeled_loss is the mean over all (padded) rows; rescale to this client's rows
                return unlabeled_loss(student, student_kl, choice, kl_direction=p.kl_direction) * len(strong) / count.clamp_min(1)

            self._unlabeled_step = vmap(grad_and_value(unl_loss))

    # ---------------------------------------------------------------------------------------
    # memory

    def chunk_size(self, cohort: int) -> int:
        """engine.chunk_clients, or as many clients as fit in half the free device memory."""
        if self.chunk_clients:
            return min(self.chunk_clients, cohort)
        if self._per_client_bytes is None:
            self._per_client_bytes = self._estimate_bytes_per_client()
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return max(1, min(cohort, int(0.5 * free) // self._per_client_bytes))

    def _estimate_bytes_per_client(self) -> int:
        """Parameters, gradients, velocity and deltas (8 copies) plus three times the tensors
        one training batch saves for backward (strong and clean views, vmap's copies)."""
        saved = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        params = {k: v.detach().to(self.device).requires_grad_() for k, v in self.model.named_parameters()}
        x = torch.zeros(self.p.batch_size, *self.sample_shape, device=self.device)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            functional_call(self.model, params, (x,)).sum()
        param_bytes = sum(v.numel() * v.element_size() for v in params.values())
        return 8 * param_bytes + 3 * saved

    # ---------------------------------------------------------------------------------------
    # training

    def train(self, clients: list[ClientData], global_params: Params, gens: list[torch.Generator]) -> list[ClientUpdate]:
        if isinstance(self.p, FedLabelParams):
            return self._fedlabel(clients, global_params, gens)
        local, loss = self._labeled_branch(clients, global_params, gens)
        delta = _minus(local, global_params)
        return [
            ClientUpdate(
                client_id=d.client_id,
                deltas={"model": {k: v[c] for k, v in delta.items()}},
                weight=float(d.num_labeled),
                metrics={"num_labeled": d.num_labeled, "loss_labeled": loss[c]},
            )
            for c, d in enumerate(clients)
        ]

    def _sgd(self, params: Stacked, velocity: Stacked | None, grads: Stacked, active: Tensor) -> None:
        """One SGD step of every active client, in the arithmetic of training.sgd_train."""
        s = self.sgd
        for k, g in grads.items():
            on = active.view(-1, *[1] * (g.dim() - 1))
            if s.weight_decay:
                g = g.add(params[k], alpha=s.weight_decay)
            if velocity is not None:
                velocity[k] = torch.where(on, velocity[k].mul(s.momentum).add(g), velocity[k])
                g = velocity[k]
            params[k] = torch.where(on, params[k].sub(g, alpha=s.lr), params[k])

    def _stack(self, global_params: Params, c: int) -> tuple[Stacked, Stacked | None]:
        params = {k: v.detach().unsqueeze(0).repeat(c, *[1] * v.dim()) for k, v in global_params.items()}
        velocity = {k: torch.zeros_like(v) for k, v in params.items()} if self.sgd.momentum else None
        return params, velocity

    def _labeled_branch(self, clients: list[ClientData], global_params: Params, gens: list[torch.Generator]) -> tuple[Stacked, list[float]]:
        """train_labeled for every client at once: (stacked local params w_L, mean losses)."""
        p, c = self.p, len(clients)
        batches, draws = [], []
        for d, g in zip(clients, gens):
            bs = batch_indices(d.num_labeled, batch_size=p.batch_size, steps=p.local_steps, generator=g)
            batches.append(bs)
            draws.append([draw_weak(len(b), generator=g, max_shift=p.weak_shift) for b in bs] if p.weak_shift else [])
        steps = torch.tensor([len(bs) for bs in batches])
        index, mask, width = _padded(batches, int(steps.max()))
        # every step's shifts in one tensor, moved to the device once (padding rows: no shift)
        shifts = torch.full((*index.shape, 2), p.weak_shift, dtype=torch.long)
        for i, ds in enumerate(draws):
            for t, dr in enumerate(ds):
                shifts[i, t, : len(dr.offsets)] = dr.offsets
        offsets = torch.tensor(self.labeled.offsets)[[d.client_id for d in clients]]
        flat, mask, shifts = (index + offsets[:, None, None]).to(self.device), mask.to(self.device), shifts.to(self.device)
        steps_on = steps.to(self.device)
        params, velocity = self._stack(global_params, c)
        total = torch.zeros(c, device=self.device)
        for t in range(index.shape[1]):
            x = to_float(self.labeled.images[flat[:, t].flatten()])
            if p.weak_shift:
                x = apply_weak(x, WeakDraws(p.weak_shift, shifts[:, t].flatten(0, 1), None))
            x = x.view(c, width, *self.sample_shape)
            m = mask[:, t]
            grads, (_, loss) = self._labeled_step(params, x, self.labeled.labels[flat[:, t]], m, m.sum(1), global_params)
            active = steps_on > t
            self._sgd(params, velocity, grads, active)
            total += loss.detach() * active
        return params, (total.cpu() / steps.clamp_min(1)).tolist()

    @torch.no_grad()
    def _experts(self, clients: list[ClientData], global_params: Params, local: Stacked) -> tuple[ExpertChoice, Tensor, Tensor]:
        """select_experts on every client's unlabeled samples, padded to C x N_max rows.
        Returns (choice with C x N_max fields, flat image indices, validity mask)."""
        p: FedLabelParams = self.p
        c = len(clients)
        sizes = torch.tensor([d.num_unlabeled for d in clients])
        n_max = max(int(sizes.max()), 1)
        valid = torch.arange(n_max)[None, :] < sizes[:, None]
        offsets = torch.tensor(self.unlabeled.offsets)[[d.client_id for d in clients]]
        flat = ((torch.arange(n_max)[None, :] + offsets[:, None]) * valid).to(self.device)
        global_logits, local_logits = [], []
        for i in range(0, n_max, _LOGIT_CHUNK):
            x = to_float(self.unlabeled.images[flat[:, i : i + _LOGIT_CHUNK]])
            global_logits.append(functional_call(self.model, global_params, (x.flatten(0, 1),)).view(c, x.shape[1], -1))
            local_logits.append(self._logits(local, x))
        g, loc = torch.cat(global_logits, 1), torch.cat(local_logits, 1)
        choice = select_experts(
            g.flatten(0, 1), loc.flatten(0, 1), confidence_kind=p.confidence, beta=p.beta, lambda0=p.lambda0, expert=p.expert
        )
        valid = valid.to(self.device)
        shaped = {f: getattr(choice, f).view(c, n_max, *getattr(choice, f).shape[1:]) for f in choice.__dataclass_fields__}
        shaped["keep"] = shaped["keep"] & valid
        return ExpertChoice(**shaped), flat, valid

    def _fedlabel(self, clients: list[ClientData], global_params: Params, gens: list[torch.Generator]) -> list[ClientUpdate]:
        p: FedLabelParams = self.p
        c = len(clients)
        local, loss_l = self._labeled_branch(clients, global_params, gens)
        choice, flat_u, valid = self._experts(clients, global_params, local)
        keep_cpu = choice.keep.cpu()
        n_kept = keep_cpu.sum(1)

        batches, draws = [], []
        h, w = self.sample_shape[1:]
        for i, (d, g) in enumerate(zip(clients, gens)):
            pool = torch.arange(d.num_unlabeled) if p.unlabeled_sampling == "all" else keep_cpu[i].nonzero().flatten()
            steps = p.unlabeled_steps if n_kept[i] > 0 else 0
            bs = [pool[j] for j in batch_indices(len(pool), batch_size=p.batch_size, steps=steps, generator=g)]
            batches.append(bs)
            draws.append([draw_strong(len(b), h, w, generator=g, num_ops=p.strong_num_ops, magnitude=p.strong_magnitude,
                                      cutout=p.strong_cutout) for b in bs])  # fmt: skip
        steps = torch.tensor([len(bs) for bs in batches])
        index, mask, width = _padded(batches, int(steps.max()))
        index, mask = index.to(self.device), mask.to(self.device)
        rows = torch.arange(c, device=self.device)[:, None]
        params, velocity = self._stack(global_params, c)
        total = torch.zeros(c, device=self.device)
        for t in range(index.shape[1]):
            idx, m = index[:, t], mask[:, t]
            clean = to_float(self.unlabeled.images[flat_u[rows, idx].flatten()])
            filler = [_step_strong(ds, t, width, p, h, w) for ds in draws]
            strong = apply_strong(clean, StrongDraws.cat(filler)).view(c, width, *self.sample_shape)
            clean = clean.view(c, width, *self.sample_shape)
            keep = choice.keep[rows, idx] & m
            weight = choice.consistency_weight[rows, idx] * m
            grads, loss = self._unlabeled_step(
                params, strong, clean, choice.pseudo_label[rows, idx], keep, weight, choice.minus_probs[rows, idx], m.sum(1)
            )
            active = (steps > t).to(self.device)
            self._sgd(params, velocity, grads, active)
            total += loss.detach() * active
        loss_u = (total.cpu() / steps.clamp_min(1)).tolist()
        return self._fedlabel_updates(clients, global_params, local, params, choice, valid, n_kept, loss_l, loss_u)

    def _fedlabel_updates(self, clients, global_params, local, unl, choice, valid, n_kept, loss_l, loss_u) -> list[ClientUpdate]:
        p: FedLabelParams = self.p
        kept_global = (choice.global_is_expert & choice.keep).sum(1).cpu()
        truth_known = self.unlabeled.labels is not None
        if truth_known:
            offsets = torch.tensor(self.unlabeled.offsets, device=self.device)[[d.client_id for d in clients]]
            n_max = valid.shape[1]
            truth = self.unlabeled.labels[((torch.arange(n_max, device=self.device)[None, :] + offsets[:, None]) * valid)]
            correct = (choice.pseudo_label == truth) & choice.keep
            n_correct, n_global_correct = correct.sum(1).cpu(), (correct & choice.global_is_expert).sum(1).cpu()
        scale = 0.5 if p.delta_combination == "mean" else 1.0
        delta_l, delta_u = _minus(local, global_params), _minus(unl, global_params)
        if p.aggregation == "split":
            stacked = {"labeled": delta_l, "unlabeled": delta_u}
        else:  # as FedLabel.client_update: 0 + scale * Delta_L + scale * Delta_U
            stacked = {"model": {k: torch.zeros_like(v).add_(v, alpha=scale).add_(delta_u[k], alpha=scale) for k, v in delta_l.items()}}
        updates = []
        for i, d in enumerate(clients):
            deltas = {name: {k: v[i] for k, v in part.items()} for name, part in stacked.items()}
            metrics = {
                "num_labeled": d.num_labeled,
                "num_unlabeled": d.num_unlabeled,
                "num_kept": int(n_kept[i]),
                "num_kept_global": int(kept_global[i]),
                "loss_labeled": loss_l[i],
                "loss_unlabeled": loss_u[i],
            }
            if truth_known:
                metrics["num_kept_correct"] = int(n_correct[i])
                metrics["num_kept_global_correct"] = int(n_global_correct[i])
            updates.append(ClientUpdate(client_id=d.client_id, deltas=deltas, weight=float(d.num_labeled + int(n_kept[i])), metrics=metrics))
        return updates


def _minus(stacked: Stacked, global_params: Params) -> Stacked:
    """Every client's delta, one subtraction per parameter (clients' deltas are views of it)."""
    return {k: v - global_params[k] for k, v in stacked.items()}


def _step_strong(draws: list[StrongDraws], t: int, width: int, p: FedLabelParams, h: int, w: int) -> StrongDraws:
    """A client's draws at step t padded to ``width`` rows (padding rows: identity, no cutout)."""
    got = draws[t] if t < len(draws) else None
    n = 0 if got is None else len(got.ops)
    cutout = torch.zeros(width - n, 1, h, w, dtype=torch.bool) if p.strong_cutout else None
    pad = StrongDraws(p.strong_magnitude, torch.zeros(width - n, p.strong_num_ops, dtype=torch.long),
                      torch.ones(width - n, p.strong_num_ops), cutout)  # fmt: skip
    return pad if got is None else StrongDraws.cat([got, pad])


__all__ = ["CohortTrainer", "batched", "run_vectorized", "vectorized_trainer"]
