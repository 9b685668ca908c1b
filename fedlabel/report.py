"""Run outputs: per-round CSV, summary.json (rewritten atomically after every round, so a
crash loses nothing already written), an accuracy plot, and the console progress bar/table."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedlabel.calibration import Reliability


def round_fields(algorithm_fields: Sequence[str] = ()) -> list[str]:
    """rounds.csv's columns: the round, its central evaluation (test accuracy, loss and expected
    calibration error, validation accuracy and loss), the pooled metrics every
    algorithm reports with ``algorithm_fields`` (the algorithms' own) among them, the round's
    failures, epsilon, and seconds (always last)."""
    return [
        "round",
        "accuracy",
        "loss",
        "ece",
        "val_accuracy",
        "val_loss",
        "pseudo_label_coverage",
        "pseudo_label_accuracy",
        *algorithm_fields,
        "loss_labeled",
        "loss_unlabeled",
        "clients",
        "failed_clients",
        "rejected_updates",
        "epsilon",
        "seconds",
    ]


def cpu_time() -> float:
    """CPU seconds (user + system) of this process, all its threads, and its finished child
    processes: all of a run's work on the in-process and vectorized engines; on the Flower
    engine the ServerApp's share (its clients run in other processes)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, allow_nan=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def environment() -> dict[str, Any]:
    """Where a run's rounds were computed: results are bitwise reproducible only on the same
    software and hardware (float sums differ across CPU kernels, GPUs and torch versions)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class RunRecorder:
    """Collects round records and writes them to ``output_dir`` as they arrive."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        config: dict[str, Any],
        total_rounds: int,
        progress: bool = True,
        resume: bool = False,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        fields: Sequence[str] = tuple(round_fields()),
    ) -> None:
        """With ``resume`` nothing in output_dir is touched until :meth:`restore` is called.
        ``on_round`` is called with each new round record once it is written; ``fields`` are
        rounds.csv's columns (:func:`round_fields`)."""
        self.on_round = on_round
        self.fields = list(fields)
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.rounds: list[dict[str, Any]] = []
        # more top-level summary entries: "privacy", and "environment" (one entry per process
        # that computed rounds of this run, in order: a resumed run may span machines)
        self.extra: dict[str, Any] = {"environment": [environment()]}
        self.start, self.cpu_start = time.perf_counter(), cpu_time()
        self.csv_path = self.dir / "rounds.csv"
        self.bar = tqdm(
            total=total_rounds,
            desc="rounds",
            unit="round",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        if not resume:
            self.restore([], wall_seconds=0.0, cpu_seconds=0.0)

    def restore(
        self, rounds: list[dict[str, Any]], *, wall_seconds: float, cpu_seconds: float
    ) -> None:
        """Start from the records of a checkpoint: rounds.csv and summary.json are rewritten
        (atomically) with exactly these rounds; the wall and CPU clocks continue from
        wall_seconds and cpu_seconds; the
        environments of the earlier processes (from the old summary.json) come before this one's
        unless it is the same."""
        earlier = self._earlier_environments()
        if earlier and earlier[-1] == self.extra["environment"][-1]:
            earlier.pop()
        self.extra["environment"] = earlier + self.extra["environment"][-1:]
        self.rounds = [dict(r) for r in rounds]
        self.start = time.perf_counter() - wall_seconds
        self.cpu_start = cpu_time() - cpu_seconds
        tmp = self.csv_path.with_name(self.csv_path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.fields)
            writer.writerows(self._csv_row(r) for r in self.rounds)
        os.replace(tmp, self.csv_path)
        self._write_summary(status="running")
        self.bar.update(len(self.rounds))

    def _earlier_environments(self) -> list[dict[str, Any]]:
        try:
            env = json.loads((self.dir / "summary.json").read_text()).get("environment")
        except (OSError, ValueError):
            return []
        return list(env) if isinstance(env, list) else []

    def wall_seconds(self) -> float:
        return time.perf_counter() - self.start

    def cpu_seconds(self) -> float:
        return cpu_time() - self.cpu_start

    def _csv_row(self, record: dict[str, Any]) -> list[Any]:
        return ["" if record.get(k) is None else record.get(k) for k in self.fields]

    def write_json(self, name: str, payload: Any) -> None:
        write_json_atomic(self.dir / name, payload)

    def log_round(self, record: dict[str, Any]) -> None:
        record = {k: _clean(v) for k, v in record.items()}
        self.rounds.append(record)
        with open(self.csv_path, "a", newline="") as fh:
            csv.writer(fh).writerow(self._csv_row(record))
        self._write_summary(status="running")
        fields = (
            ("acc", "accuracy", ".4f"),
            ("coverage", "pseudo_label_coverage", ".2f"),
            ("eps", "epsilon", ".2f"),
        )
        self.bar.set_postfix(
            {
                name: format(record[key], fmt)
                for name, key, fmt in fields
                if record.get(key) is not None
            },
            refresh=False,
        )
        self.bar.update(1)
        if self.on_round is not None:
            self.on_round(record)

    def final_accuracy(self) -> float | None:
        evaluated = [r["accuracy"] for r in self.rounds if r.get("accuracy") is not None]
        return evaluated[-1] if evaluated else None

    def selection(self) -> dict[str, Any]:
        """summary.json's ``best_val_accuracy`` and ``best_val_round`` (the first round that
        reached it; None without a validation set) and ``ece`` (the last evaluated round's)."""
        val = [r for r in self.rounds if r.get("val_accuracy") is not None]
        best = max(val, key=lambda r: r["val_accuracy"], default=None)
        ece = [r["ece"] for r in self.rounds if r.get("ece") is not None]
        return {
            "best_val_accuracy": None if best is None else best["val_accuracy"],
            "best_val_round": None if best is None else best["round"],
            "ece": ece[-1] if ece else None,
        }

    def _write_summary(
        self, *, status: str, error: str | None = None, stop_reason: str | None = None
    ) -> None:
        summary = {
            "status": status,
            "final_accuracy": self.final_accuracy(),
            **self.selection(),
            "wall_seconds": self.wall_seconds(),
            "cpu_seconds": self.cpu_seconds(),
            "rounds": self.rounds,
            "config": self.config,
            **self.extra,
        }
        if error:
            summary["error"] = error
        if stop_reason:
            summary["stop_reason"] = stop_reason
        write_json_atomic(self.dir / "summary.json", summary)

    def finish(
        self, *, error: str | None = None, stopped: bool = False, stop_reason: str | None = None
    ) -> dict[str, Any]:
        """Close the summary: completed, failed (``error``), stopped (``error`` says by what) or
        stopped_early (``stop_reason`` says why)."""
        self.bar.close()
        status = (
            "stopped"
            if stopped
            else "failed"
            if error
            else "stopped_early"
            if stop_reason
            else "completed"
        )
        self._write_summary(status=status, error=error, stop_reason=None if error else stop_reason)
        if self.rounds:
            plot_curves(
                [("", self.rounds)],
                self.dir / "accuracy.png",
                title=str(self.config.get("algorithm", {}).get("name", "")),
            )
        return json.loads((self.dir / "summary.json").read_text())


def plot_curves(
    curves: Sequence[tuple[str, list[dict[str, Any]]]], path: Path, *, title: str = ""
) -> None:
    """Test accuracy against round, one line per (label, rounds); a legend when labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rounds in curves:
        pts = [(r["round"], r["accuracy"]) for r in rounds if r.get("accuracy") is not None]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="." if len(pts) < 60 else None,
            label=label or None,
        )
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(label for label, _ in curves):
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(bins: Reliability, path: Path, *, title: str = "") -> None:
    """A reliability diagram: per confidence bin, the share correct against the mean confidence
    (the diagonal is perfect calibration), and the share of predictions in each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 1 / len(bins.counts)
    lefts = [b * width for b in range(len(bins.counts))]
    accuracy = [0.0 if a is None else a for a in bins.accuracy()]
    confidence = [c for c in bins.mean_confidence() if c is not None]
    shown = [a for a, n in zip(accuracy, bins.counts) if n]
    fig, (ax, share) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(lefts, accuracy, width=width, align="edge", edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.plot(
        confidence,
        shown,
        marker=".",
        linestyle="",
        color="red",
        label="(mean confidence, accuracy)",
    )
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (ECE {bins.ece:.4f})".strip())
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    total = sum(bins.counts)
    share.bar(lefts, [n / total for n in bins.counts], width=width, align="edge")
    share.set_xlabel("confidence")
    share.set_ylabel("share of predictions")
    share.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def round_line(record: dict[str, Any], total: int) -> str:
    """One line per round for logs: 'round 3/30: accuracy 0.6123, loss 1.0312, coverage 0.41,
    eps 2.31, clients 10 (failed 0, rejected 0)'; fields without a value are left out."""
    parts = [
        f"{name} {format(record[key], fmt)}"
        for name, key, fmt in (
            ("accuracy", "accuracy", ".4f"),
            ("loss", "loss", ".4f"),
            ("coverage", "pseudo_label_coverage", ".3f"),
            ("eps", "epsilon", ".3g"),
            ("proportion eps", "proportion_epsilon", ".3g"),
        )
        if record.get(key) is not None
    ]
    clients = (
        f"clients {record.get('clients', 0)} (failed {record.get('failed_clients', 0)}, "
        f"rejected {record.get('rejected_updates', 0)})"
    )
    return f"round {record['round']}/{total}: " + ", ".join([*parts, clients])


def format_table(rounds: list[dict[str, Any]], *, max_rows: int = 12) -> str:
    """A compact console table of selected rounds (evenly spaced, always the last); ``val_acc``
    and ``ece`` columns when rounds report them, an ``eps`` column when a privacy mechanism
    reports epsilon (DP-SGD, central DP, label-DP proportions)."""
    cols = [
        ("round", "{:>5}"),
        ("accuracy", "{:>8.4f}"),
        ("loss", "{:>7.4f}"),
        ("pseudo_label_coverage", "{:>8.3f}"),
        ("pseudo_label_accuracy", "{:>8.3f}"),
        ("global_expert_share", "{:>8.3f}"),
        ("seconds", "{:>7.2f}"),
    ]
    heads = ["round", "accuracy", "loss", "coverage", "pl_acc", "glob_exp", "sec"]
    at = 3  # after round, accuracy, loss
    for key, head in (("val_accuracy", "val_acc"), ("ece", "ece")):
        if any(r.get(key) is not None for r in rounds):
            cols.insert(at, (key, "{:>7.4f}"))
            heads.insert(at, head)
            at += 1
    for key in ("epsilon", "proportion_epsilon"):
        if any(r.get(key) is not None for r in rounds):
            cols.insert(-1, (key, "{:>7.3g}"))
            heads.insert(-1, "eps" if key == "epsilon" else "prop_eps")
    rows = [r for r in rounds if r.get("accuracy") is not None] or rounds
    if len(rows) > max_rows:
        step = math.ceil(len(rows) / max_rows)
        rows = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
    lines = ["  ".join(f"{h:>{max(5, len(h))}}" for h in heads)]
    for r in rows:
        cells = []
        for (key, fmt), h in zip(cols, heads):
            v = r.get(key)
            cells.append(
                f"{'-':>{max(5, len(h))}}" if v is None else f"{fmt.format(v):>{max(5, len(h))}}"
            )
        lines.append("  ".join(cells))
    return "\n".join(lines)
