"""The library API: compose a config the way `fedlabel simulate` does and run it.

    import fedlabel
    summary = fedlabel.run(["experiment=smoke", "engine=inprocess", "output_dir=out/smoke"])
    print(summary["final_accuracy"])

The CLI, the privacy sweep and the benchmarks use this module; it imports nothing heavy at
module level (torch, Hydra and the engines load on the first call).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from fedlabel.config import Config


def register_configs() -> None:
    """Register the schema defaults as Hydra config groups (one source of defaults)."""
    from hydra.core.config_store import ConfigStore

    from fedlabel.algorithms import ALGORITHMS
    from fedlabel.config import (
        ENGINES,
        PRIVACY_MECHANISMS,
        Config,
        DataConfig,
        EngineConfig,
        ModelConfig,
        PrivacyConfig,
    )

    cs = ConfigStore.instance()
    groups = ("algorithm", "data", "model", "engine", "privacy")
    top = {f.name: getattr(Config(), f.name) for f in dataclasses.fields(Config)}
    top = {k: v for k, v in top.items() if k not in groups}
    top = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in top.items()}
    cs.store(name="fedlabel_defaults", node=top)  # (asdict: nested groups such as faults)
    for name, preset in ALGORITHMS.items():
        cs.store(group="algorithm", name=name, node=dataclasses.asdict(preset.params()))
    for name in ("fashion_mnist", "npz"):
        cs.store(group="data", name=name, node=dataclasses.asdict(DataConfig(name=name)))
    for name in ("cnn", "resnet18"):
        cs.store(group="model", name=name, node=dataclasses.asdict(ModelConfig(name=name)))
    for name in ENGINES:
        cs.store(group="engine", name=name, node=dataclasses.asdict(EngineConfig(name=name)))
    for name in PRIVACY_MECHANISMS:
        cs.store(group="privacy", name=name, node=dataclasses.asdict(PrivacyConfig(name=name)))


def hydra_config(overrides: Sequence[str]) -> DictConfig:
    """The unresolved Hydra config of `fedlabel simulate <overrides>`; ConfigError (one line)
    for an unknown key or group option."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from fedlabel.errors import ConfigError

    register_configs()
    try:
        with initialize_config_module(config_module="fedlabel._configs", version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(one_line(err)) from err


def compose(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config dict of `fedlabel simulate <overrides>` (Hydra composition, no run).
    Without an output_dir override it is outputs/<date>/<time>, as Hydra's run folder."""
    from omegaconf import OmegaConf

    overrides = list(overrides)
    if not any(o.startswith("output_dir=") for o in overrides):
        overrides.append(f"output_dir=outputs/{datetime.now():%Y-%m-%d/%H-%M-%S}")
    return OmegaConf.to_container(hydra_config(overrides), resolve=True)


def run(config: Config | dict[str, Any] | Sequence[str], *, progress: bool = True) -> dict:
    """Run one simulation on its engine; returns summary.json's content.

    ``config``: a :class:`fedlabel.config.Config`, a nested config dict (e.g. :func:`compose`'s)
    or a list of Hydra overrides as `fedlabel simulate` takes them. Everything that can be
    checked before work is: the config, the device, the resume checkpoint, and output_dir
    (created and locked for this process; refused if it holds another run and neither resume nor
    overwrite is set). SIGTERM, SIGINT and SIGHUP stop the run (RunStopped): the summary says
    ``stopped``, the last checkpoint stays. Errors: ConfigError, DataError, FlowerRunError,
    RoundFailed, RunStopped."""
    from fedlabel.checkpoint import check_resumable, load_checkpoint
    from fedlabel.config import Config, config_from_dict, config_to_dict
    from fedlabel.lifecycle import claim_output_dir, release_output_dir, stop_on_signals

    if isinstance(config, str):
        raise TypeError(f"config: a list of overrides such as [{config!r}], not one string")
    if isinstance(config, Config):
        config = config_to_dict(config)
    cfg = config_from_dict(config if isinstance(config, dict) else compose(config))
    cfg = dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).expanduser().resolve()))
    check_device(cfg)
    if cfg.resume:
        check_resumable(load_checkpoint(cfg.output_dir), config_to_dict(cfg))
    claim_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite)
    try:
        with stop_on_signals():
            if cfg.engine.name == "flower":
                from fedlabel.engines.flower import run_flower

                return run_flower(cfg, progress=progress)
            if cfg.engine.name == "vectorized":
                from fedlabel.engines.vectorized import run_vectorized

                return run_vectorized(cfg, progress=progress)
            from fedlabel.engines.inprocess import run_inprocess

            return run_inprocess(cfg, progress=progress)
    finally:
        release_output_dir(cfg.output_dir)


def check_device(cfg: Config) -> None:
    """ConfigError for a CUDA device this machine does not have (unless clients run on a Ray
    cluster elsewhere: engine.ray_address)."""
    import torch

    from fedlabel.errors import check

    if not cfg.device.startswith("cuda") or cfg.engine.ray_address:
        return
    index = int(cfg.device.split(":", 1)[1]) if ":" in cfg.device else 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check(
        index < count,
        "device",
        f"{cfg.device} but torch {torch.__version__} sees {count} CUDA "
        "device(s) here; use device=auto or device=cpu",
    )


def one_line(err: BaseException) -> str:
    """A Hydra or OmegaConf error as one line (they span several, with hints that do not apply)."""
    text = str(err) + (f"\n{err.__cause__}" if err.__cause__ else "")
    key = re.search(r"full_key: (\S+)", text)
    if "is not in struct" in text and key:
        return f"unknown config key {key.group(1)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not re.match(r"(object_type|reference_type)=", ln)]
    if "Available options" in text:
        head, _, options = text.partition("Available options")
        group = re.search(r"Could not find '([^']+)'", head)
        opts = ", ".join(options.split("Config search path")[0].split(":", 1)[-1].split())
        return f"unknown option {group.group(1) if group else head.strip()}; choose from {opts}"
    return "; ".join(lines)
