"""DP-SGD's cost against a non-private client update, per Opacus per-sample gradient mode.

One FedAvg client update (the default CNN on 28 x 28 images, batch 32, the default local steps
and weak augmentation) without DP and under privacy=dpsgd with every privacy.grad_sample_mode,
plus "hooks, before": Opacus's hooks with the clipping code before grad_sample_mode existed
(per-record gradients scaled by n, then an einsum). The variants run in one process, alternating
round by round, so other load on the machine hits all of them alike; CPU seconds are this
process's (all threads). The last column: the largest absolute difference between the mode's
clipped, summed gradients and those of Opacus's hooks, on one batch of 32 records (q = 1, zero
noise, clip norm 1).

A second table times one SGD step's gradient on a fixed batch of 32 (same alternation): the
non-private gradient, "ew", "bk", and Opacus's ghost clipping (GradSampleModuleFastGradientClipping:
per-row norms without per-row gradients, then a second backward pass of the loss reweighted per
row). Ghost clipping is not a grad_sample_mode: it needs each row's own loss (the project's
losses return the mean over records) and clips rows, not records (wrong for losses that see k
views of each record, as FedLabel's kl_input=clean does).

  python benchmarks/dpsgd_cost.py [--rounds 20] [--records 600] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from fedlabel.algorithms import ALGORITHMS, build_algorithm
from fedlabel.config import PrivacyConfig
from fedlabel.data import ClientData
from fedlabel.models import SmallCNN
from fedlabel.privacy import dpsgd
from fedlabel.privacy.mechanism import private_client_update
from fedlabel.training import SgdConfig, forward, get_params

CPU = torch.device("cpu")


def _client(n: int) -> ClientData:
    g = torch.Generator().manual_seed(0)
    return ClientData(
        client_id=0,
        labeled_images=torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
        labeled_labels=torch.randint(0, 10, (n,), generator=g),
        unlabeled_images=torch.zeros(0, 1, 28, 28, dtype=torch.uint8),
        unlabeled_true_labels=torch.zeros(0, dtype=torch.long),
    )


def _before_per_record(grad_sample: torch.Tensor, num_records: int) -> torch.Tensor:
    rows = grad_sample.shape[0]
    shaped = grad_sample.reshape(rows // num_records, num_records, *grad_sample.shape[1:])
    return shaped.sum(0) * num_records


def _before_clip(per_record, max_grad_norm: float, *, scale: float = 1.0):
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_record]).norm(dim=0)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return [torch.einsum("i,i...->...", factor, g) for g in per_record]


class _Before:
    """Within the block, DP-SGD clips with the code that ran before grad_sample_mode."""

    def __enter__(self):
        self.saved = dpsgd.per_record_gradients, dpsgd.clip_and_sum
        dpsgd.per_record_gradients, dpsgd.clip_and_sum = _before_per_record, _before_clip

    def __exit__(self, *exc):
        dpsgd.per_record_gradients, dpsgd.clip_and_sum = self.saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="client updates per variant")
    ap.add_argument("--records", type=int, default=600, help="labeled records of the client")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SmallCNN(1, 10, 28)
    params, client = get_params(model), _client(args.records)
    algorithm = build_algorithm(ALGORITHMS["fedavg"].params())

    def update(privacy: PrivacyConfig) -> Callable[[int], object]:
        return lambda r: private_client_update(
            algorithm,
            privacy,
            model,
            params,
            client,
            generator=torch.Generator().manual_seed(r),
            device=CPU,
        )

    def before(r: int):
        with _Before():
            return update(PrivacyConfig(name="dpsgd", grad_sample_mode="hooks"))(r)

    variants: dict[str, Callable[[int], object]] = {"non-private": update(PrivacyConfig())}
    variants["hooks, before"] = before
    for mode in ("hooks", "functorch", "ew", "bk"):
        variants[mode] = update(PrivacyConfig(name="dpsgd", grad_sample_mode=mode))
    seconds = dict.fromkeys(variants, 0.0)
    for r in range(args.rounds + 1):  # round 0 warms up (Opacus import, wrapped modules)
        for name, run in variants.items():
            start = time.process_time()
            run(r)
            if r:
                seconds[name] += time.process_time() - start
    diffs = _clipped_sum_differences(model, params, client)
    base = seconds["non-private"] / args.rounds
    print(
        f"FedAvg client update, default CNN, batch 32, {algorithm.params.local_steps} local"
        f" steps, {args.records} records, {args.rounds} updates per variant,"
        f" {args.threads} torch thread(s)\n"
    )
    print(
        "| mode | CPU s per update | ratio to non-private | max abs diff of clipped sums vs hooks |"
    )
    print("|---|---|---|---|")
    for name, total in seconds.items():
        per = total / args.rounds
        diff = diffs.get(name, "-")
        print(f"| {name} | {per:.3f} | {per / base:.2f}x | {diff} |")
    _one_step_table(model, params, client, args.rounds * 10)


def _one_step_table(model, params, client: ClientData, repeats: int) -> None:
    """CPU ms of one step's gradient on a fixed batch: non-private, ew, bk, ghost clipping."""
    import copy
    import warnings

    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
        GradSampleModuleFastGradientClipping,
    )

    x, y = client.labeled_images[:32].float() / 255, client.labeled_labels[:32]
    ce = torch.nn.functional.cross_entropy
    ew = dpsgd.grad_sample_module(model, CPU, "ew")
    ghost = GradSampleModuleFastGradientClipping(
        copy.deepcopy(model), loss_reduction="sum", max_grad_norm=1.0, use_ghost_clipping=True
    )
    ew.load_state_dict(dpsgd.to_wrapped(params))
    ghost.load_state_dict(dpsgd.to_wrapped(params))

    def plain():
        p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        torch.autograd.grad(ce(forward(model, p, x), y), list(p.values()))

    def with_ew():
        ce(ew(x), y).backward()
        weights = list(ew.parameters())
        dpsgd.clip_and_sum([w.grad_sample for w in weights], 1.0, scale=len(x))
        for w in weights:
            w.grad, w.grad_sample = None, None

    def with_ghost():
        losses = ce(ghost(x), y, reduction="none")
        losses.sum().backward(retain_graph=True)  # hooks: per-row norms
        coef = ghost.get_clipping_coef()
        ghost.zero_grad()
        ghost.disable_hooks()
        (losses * coef).sum().backward()  # the clipped sum, in .grad
        ghost.enable_hooks()
        ghost.zero_grad()

    bk = dpsgd.grad_sample_module(model, CPU, "bk")
    bk.load_state_dict(dpsgd.to_wrapped(params))

    def with_bk():
        bk.clipped_sum(ce(bk(x), y), len(x), 1.0)

    steps = {"non-private": plain, "ew": with_ew, "bk": with_bk, "ghost clipping": with_ghost}
    ms = dict.fromkeys(steps, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(repeats + 1):
            for name, step in steps.items():
                start = time.process_time()
                step()
                if r:
                    ms[name] += (time.process_time() - start) * 1000 / repeats
    print(f"\nOne step's gradient, fixed batch of 32, {repeats} repeats\n")
    print("| gradient | CPU ms per step | ratio to non-private |")
    print("|---|---|---|")
    for name, t in ms.items():
        print(f"| {name} | {t:.1f} | {t / ms['non-private']:.2f}x |")


def _clipped_sum_differences(model, params, client: ClientData) -> dict[str, str]:
    """Each variant's clipped sum on one batch of 32 records against that of hooks."""
    x, y = client.labeled_images[:32], client.labeled_labels[:32]

    def clipped_sum(mode: str) -> dict[str, torch.Tensor]:
        trainer = dpsgd.DpSgd(
            dpsgd.DpSgdSettings(0.0, 1.0, grad_sample_mode=mode), torch.Generator()
        )
        batches = trainer.batches(32, batch_size=32, steps=1, generator=torch.Generator())

        def loss_fn(f, idx):
            return torch.nn.functional.cross_entropy(f(x[idx].float() / 255), y[idx])

        new, _ = trainer.train(
            model, params, batches=batches, loss_fn=loss_fn, sgd=SgdConfig(lr=1.0)
        )
        return {k: (params[k] - new[k]) * 32 for k in params}  # q n = 32, lr 1

    ref = clipped_sum("hooks")
    with _Before():
        sums = {"hooks, before": clipped_sum("hooks")}
    sums.update({m: clipped_sum(m) for m in ("hooks", "functorch", "ew", "bk")})
    return {
        name: f"{max(float((s[k] - ref[k]).abs().max()) for k in ref):.1e}"
        for name, s in sums.items()
    }


if __name__ == "__main__":
    main()
