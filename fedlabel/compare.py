"""`fedlabel compare DIR...`: one table and one plot across run folders.

Each run folder holds summary.json (fedlabel/report.py) and, when the CLI made it,
.hydra/overrides.yaml. The table's setting columns are the keys whose values differ across the
runs: a group choice (``algorithm=fedavg``) shows as its name, and a key that only some runs have
(one algorithm's own setting) counts only where an override set it. Then, per run: the final test
accuracy, the mean of the last N evaluated accuracies, the best validation accuracy and its
round, ECE, epsilon (DP-SGD or central DP) and label_epsilon (label-DP bag counts) where
private, wall time, rounds done and status. Written as compare.md, compare.csv and compare.png
(the runs' test-accuracy curves overlaid).

:class:`MultirunCompare` (configs/config.yaml, hydra.callbacks) writes them into the sweep folder
at the end of every `fedlabel simulate -m ...`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from fedlabel.report import plot_curves

# keys that say where and how a run was started, not what it computed
IGNORED_KEYS = ("output_dir", "resume", "overwrite")
METRICS = (
    ("final_accuracy", ".4f"),
    ("mean_last", ".4f"),
    ("best_val_accuracy", ".4f"),
    ("best_val_round", "d"),
    ("ece", ".4f"),
    ("epsilon", ".3g"),
    ("label_epsilon", ".3g"),
    ("wall_seconds", ".1f"),
    ("rounds_done", "s"),
    ("status", "s"),
)
FILES = ("compare.md", "compare.csv", "compare.png")


class CompareError(ValueError):
    """A folder that is not a readable run folder; the message names it."""


@dataclass
class RunFolder:
    path: Path
    summary: dict[str, Any]
    settings: dict[str, Any]  # the resolved config (dotted keys) and override-only keys
    overridden: list[str]  # the keys .hydra/overrides.yaml sets, in its order


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys; a section's ``name`` (the group choice: algorithm, data, ...) is the
    section's own key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{dotted}.")
        else:
            flat[prefix[:-1] if key == "name" and prefix else dotted] = value
    return flat


def _overrides(path: Path) -> dict[str, str]:
    """key -> value of .hydra/overrides.yaml ('+key=v', '++key=v'; '~key' deletes: no value)."""
    import yaml

    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return {}
    try:
        lines = yaml.safe_load(file.read_text()) or []
    except yaml.YAMLError as err:
        raise CompareError(f"{path}: unreadable .hydra/overrides.yaml ({err})") from err
    pairs = [str(line).lstrip("+~").partition("=") for line in lines]
    return {key: value for key, _, value in pairs}


def load_run(path: str | Path) -> RunFolder:
    path = Path(path)
    file = path / "summary.json"
    if not file.is_file():
        held = sorted(p.parent.name for p in path.glob("*/summary.json"))
        hint = f"; it holds run folders: {', '.join(held)}" if held else ""
        raise CompareError(f"{path}: not a run folder (no summary.json){hint}")
    try:
        summary = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CompareError(f"{path}: unreadable summary.json ({err})") from err
    rounds = summary.get("rounds") if isinstance(summary, dict) else None
    if not isinstance(rounds, list) or not all(
        isinstance(r, dict) and "round" in r for r in rounds
    ):
        raise CompareError(f"{path}: summary.json is not a run summary (no list of rounds)")
    overrides = _overrides(path)
    settings = {k: v for k, v in overrides.items() if k not in IGNORED_KEYS}
    config = summary.get("config")
    settings |= {
        k: v
        for k, v in flatten(config if isinstance(config, dict) else {}).items()
        if k not in IGNORED_KEYS
    }
    return RunFolder(path, summary, settings, [k for k in overrides if k in settings])


def differing_keys(runs: Sequence[RunFolder]) -> list[str]:
    """The settings whose values differ across ``runs``: overridden keys (in override order),
    then the keys every run has (sorted)."""
    overridden = list(dict.fromkeys(k for run in runs for k in run.overridden))
    common = sorted(set.intersection(*(set(run.settings) for run in runs)) - set(overridden))

    def differs(key: str) -> bool:
        return len({json.dumps(run.settings.get(key), sort_keys=True) for run in runs}) > 1

    return [k for k in overridden + common if differs(k)]


def _last(rounds: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(rounds) if r.get(key) is not None), None)


def metrics(summary: dict[str, Any], *, last: int = 5) -> dict[str, Any]:
    """One run's metric columns (None where the run has no such value)."""
    rounds = summary["rounds"]
    evaluated = [r["accuracy"] for r in rounds if r.get("accuracy") is not None][-last:]
    best, best_round = summary.get("best_val_accuracy"), summary.get("best_val_round")
    validated = [r for r in rounds if r.get("val_accuracy") is not None]
    if best is None and validated:
        top = max(validated, key=lambda r: r["val_accuracy"])  # the first round that reached it
        best, best_round = top["val_accuracy"], top["round"]
    config = summary.get("config") or {}
    return {
        "final_accuracy": summary.get("final_accuracy"),
        "mean_last": sum(evaluated) / len(evaluated) if evaluated else None,
        "best_val_accuracy": best,
        "best_val_round": best_round,
        "ece": summary["ece"] if summary.get("ece") is not None else _last(rounds, "ece"),
        "epsilon": _last(rounds, "epsilon"),
        "label_epsilon": _last(rounds, "proportion_epsilon"),  # label-DP bag counts
        "wall_seconds": summary.get("wall_seconds"),
        "rounds_done": f"{len(rounds)}/{config.get('rounds', '?')}",
        "status": summary.get("status"),
    }


def _cell(value: Any, fmt: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return format(value, fmt) if fmt and not isinstance(value, (bool, str)) else str(value)


def _headers(keys: Sequence[str], last: int) -> list[str]:
    names = {"mean_last": f"mean_last_{last}"}
    return ["run", *keys, *(names.get(m, m) for m, _ in METRICS)]


def compare(folders: Sequence[str | Path], *, out: str | Path | None = None, last: int = 5) -> str:
    """Write compare.md, compare.csv and compare.png for ``folders`` into ``out`` (default:
    the folders' common parent) and return the markdown table. CompareError for a folder that
    is not a run, before anything is written."""
    if not folders:
        raise CompareError("no run folders given")
    if last < 1:
        raise CompareError(f"--last must be >= 1, got {last}")
    runs = [load_run(f) for f in folders]
    parent = Path(os.path.commonpath([str(r.path.resolve().parent) for r in runs]))
    out = Path(out) if out is not None else parent
    names = [os.path.relpath(r.path.resolve(), parent) for r in runs]
    keys = differing_keys(runs)
    rows = [
        [name, *(run.settings.get(k) for k in keys), *metrics(run.summary, last=last).values()]
        for name, run in zip(names, runs)
    ]
    headers = _headers(keys, last)
    formats = [""] * (1 + len(keys)) + [fmt for _, fmt in METRICS]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(_cell(v, f) for v, f in zip(row, formats)) + " |" for row in rows),
    ]
    markdown = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown)
    with open(out / "compare.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(headers)
        writer.writerows(["" if v is None else _cell(v) for v in row] for row in rows)
    labels = [
        ", ".join(f"{k}={_cell(run.settings.get(k))}" for k in keys) or name
        for name, run in zip(names, runs)
    ]
    plot_curves(
        [(label, run.summary["rounds"]) for label, run in zip(labels, runs)],
        out / "compare.png",
        title=f"{len(runs)} runs",
    )
    return markdown


def _natural(path: Path) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


class MultirunCompare(Callback):
    """At the end of a Hydra multirun: compare.md/csv/png over this sweep's runs (the folders
    of its jobs with a summary.json, in job order), in the sweep folder. Jobs that left no
    summary.json (a config error) are named; a comparison that fails is reported, the sweep's
    result is kept. The jobs are those this launcher ran (folders an earlier sweep left in a
    reused sweep folder are not); a launcher running jobs in other processes reports none, and
    then every run folder under the sweep folder counts."""

    def __init__(self) -> None:
        self.jobs: set[Path] = set()

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        self.jobs.add(Path(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = self.jobs or {p.parent for p in sweep.rglob(".hydra")} | {
            p.parent for p in sweep.rglob("summary.json") if ".hydra" not in p.parts
        }
        runs = sorted((j for j in jobs if (j / "summary.json").is_file()), key=_natural)
        missing = sorted(jobs - set(runs), key=_natural)
        if missing:
            names = ", ".join(os.path.relpath(j, sweep) for j in missing)
            print(f"fedlabel compare: no summary.json (left out): {names}")
        if not runs:
            print(f"fedlabel compare: no run folders under {sweep}")
            return
        try:
            print(compare(runs, out=sweep), end="")
        except CompareError as err:
            print(f"fedlabel compare: {err}")
            return
        print(f"comparison: {', '.join(str(sweep / f) for f in FILES)}")
