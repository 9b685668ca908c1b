"""Checkpoints of a run in its output directory, written atomically after complete rounds.

``checkpoint.pt`` holds the round number, the global parameters, the algorithm's server state,
the RNG states of this process, the round records so far and the config. It is written to a
temporary file, synced and renamed over the previous one, so a kill at any moment leaves
either the previous checkpoint or the new one, never a torn file."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlabel.errors import ConfigError
from fedlabel.stopping import stop_reason

FILE = "checkpoint.pt"
FORMAT = 1
# Fields that may differ between a checkpoint and the run resuming it: how long the run goes,
# where and how often it writes or evaluates (evaluation draws no random numbers), the resume
# switch itself, and where the rounds are computed (engine, device): a run started on a GPU may
# go on on CPUs. Engines and devices compute the same rounds with other float sums (and the
# vectorized engine with its own per-client random streams), so a run resumed on another engine
# is not bitwise the run that would have gone on where it started.
# stop and mlflow only decide when the run ends and where it is logged; privacy.grad_sample_mode
# is how DP-SGD computes the same clipped sums (other float sums, like engine and device).
MAY_DIFFER = {
    "rounds",
    "output_dir",
    "checkpoint_every",
    "resume",
    "overwrite",
    "eval_every",
    "eval_last",
    "tensorboard",
    "engine",
    "device",
    "stop",
    "mlflow",
    "privacy.grad_sample_mode",
}
# Fields added after checkpoints were first written, with the value that runs what a checkpoint
# without the field ran: such a checkpoint goes on where the current config has that value.
ADDED_SINCE = {
    "data.val_fraction": 0.0,
    "data.test_samples": 0,
    "algorithm.strong_magnitude_scale": 30,
    "algorithm.mu": 0.0,  # FedAvg, FixMatch and UDA before FedProx became their mu
    "model.activation": "relu",
}


def rng_states() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save_checkpoint(
    output_dir: str | Path,
    *,
    round: int,
    params: dict[str, torch.Tensor],
    algorithm_state: dict,
    rounds: list[dict],
    config: dict,
    wall_seconds: float,
    cpu_seconds: float = 0.0,
    privacy_state: dict | None = None,
    stop_reason: str | None = None,
) -> Path:
    """Write output_dir/checkpoint.pt atomically; returns its path. ``stop_reason``: why the
    run stopped early after this round (a finished run, not one to go on silently)."""
    path = Path(output_dir) / FILE
    tmp = path.with_name(path.name + ".tmp")
    payload = {
        "format": FORMAT,
        "round": round,
        "params": {k: v.detach().cpu() for k, v in params.items()},
        "algorithm": algorithm_state,
        "rng": rng_states(),
        "rounds": rounds,
        "config": config,
        "wall_seconds": wall_seconds,
        "cpu_seconds": cpu_seconds,
        "privacy": privacy_state or {},  # fedlabel.privacy's accountant history
        "stop_reason": stop_reason,
    }
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(output_dir: str | Path) -> dict[str, Any]:
    """Read output_dir/checkpoint.pt; ConfigError if there is none or it cannot be read."""
    path = Path(output_dir) / FILE
    if not path.is_file():
        raise ConfigError(
            f"resume: {path} does not exist; resume=true continues a run in output_dir from its"
            " checkpoint"
        )
    try:
        # weights_only=False: the checkpoint also holds numpy/python RNG states; it is our own file.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any unreadable file is reported the same way
        raise ConfigError(f"resume: cannot read {path} ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"resume: {path} is not a fedlabel checkpoint of format {FORMAT}")
    return state


def config_differences(
    saved: dict, current: dict, prefix: str = "", saved_as: str = "checkpoint"
) -> list[str]:
    """Dotted names of the fields that differ between two config dicts (MAY_DIFFER excepted),
    each with both values; ``saved_as`` names the saved side."""
    out = []
    for key in sorted(set(saved) | set(current)):
        name = prefix + key
        if name in MAY_DIFFER:
            continue
        a, b = saved.get(key, ADDED_SINCE.get(name) if key in current else None), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, name + ".", saved_as))
        elif a != b:
            out.append(f"{name} ({saved_as} {a!r}, now {b!r})")
    return out


def check_resumable(state: dict, current: dict) -> None:
    """ConfigError unless ``current`` config may continue the checkpointed run. A run that
    stopped early is finished: it goes on only where ``current``'s stop settings would not have
    stopped it after its last round."""
    diffs = config_differences(state["config"], current)
    if diffs:
        raise ConfigError(f"resume: the config differs from the checkpoint's in {'; '.join(diffs)}")
    again = state.get("stop_reason") and stop_reason(state["rounds"], **current["stop"])
    if again:
        raise ConfigError(
            f"resume: the run stopped early after round {state['round']} and is finished ({again});"
            " to train on, change stop.patience or stop.target_accuracy"
        )
    if current["rounds"] < state["round"]:
        raise ConfigError(
            f"rounds: {current['rounds']} is fewer than the {state['round']} rounds already in the"
            " checkpoint"
        )
