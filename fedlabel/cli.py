"""`fedlabel` command line.

  fedlabel simulate [hydra overrides]   run a simulation (engine=flower by default)
  fedlabel flower-config [--write]      print (or rewrite in pyproject.toml) the
                                        [tool.flwr.app.config] section from the schema
  fedlabel privacy-sweep [options] [overrides]
                                        privacy-utility sweep -> docs/privacy.md
                                        (`fedlabel privacy-sweep --help`)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

USAGE = __doc__


def register_configs() -> None:
    """Register the schema defaults as Hydra config groups (one source of defaults)."""
    from hydra.core.config_store import ConfigStore

    from fedlabel.algorithms import ALGORITHMS
    from fedlabel.config import ENGINES, PRIVACY_MECHANISMS, Config, DataConfig, EngineConfig, ModelConfig, PrivacyConfig

    cs = ConfigStore.instance()
    top = {f.name: getattr(Config(), f.name) for f in dataclasses.fields(Config) if f.name not in ("algorithm", "data", "model", "engine", "privacy")}
    top = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in top.items()}  # e.g. faults
    cs.store(name="fedlabel_defaults", node=top)
    for name, algo in ALGORITHMS.items():
        cs.store(group="algorithm", name=name, node=dataclasses.asdict(algo.Params()))
    for name in ("fashion_mnist", "npz"):
        cs.store(group="data", name=name, node=dataclasses.asdict(DataConfig(name=name)))
    for name in ("cnn", "resnet18"):
        cs.store(group="model", name=name, node=dataclasses.asdict(ModelConfig(name=name)))
    for name in ENGINES:
        cs.store(group="engine", name=name, node=dataclasses.asdict(EngineConfig(name=name)))
    for name in PRIVACY_MECHANISMS:
        cs.store(group="privacy", name=name, node=dataclasses.asdict(PrivacyConfig(name=name)))


def run_config(values: dict[str, Any], *, progress: bool = True) -> dict[str, Any]:
    """Validate a nested config dict and run it on its engine; returns summary.json's content."""
    from fedlabel.config import config_from_dict

    cfg = config_from_dict(values)
    cfg = dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).expanduser().resolve()))
    if cfg.engine.name == "flower":
        from fedlabel.engines.flower import run_flower

        return run_flower(cfg, progress=progress)
    if cfg.engine.name == "vectorized":
        from fedlabel.engines.vectorized import run_vectorized

        return run_vectorized(cfg, progress=progress)
    from fedlabel.engines.inprocess import run_inprocess

    return run_inprocess(cfg, progress=progress)


def _simulate(argv: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from fedlabel.config import ConfigError
    from fedlabel.data import DataError
    from fedlabel.engines.flower import FlowerRunError
    from fedlabel.federation import RoundFailed
    from fedlabel.report import format_table

    register_configs()
    status = {"code": 0}

    @hydra.main(version_base="1.3", config_path="pkg://configs", config_name="config")
    def _main(hcfg: DictConfig) -> None:
        values = OmegaConf.to_container(hcfg, resolve=True)
        try:
            summary = run_config(values)
        except (ConfigError, DataError, FlowerRunError, RoundFailed) as err:
            kind = {ConfigError: "config", DataError: "data", FlowerRunError: "flower", RoundFailed: "run"}[type(err)]
            print(f"fedlabel: {kind} error: {err}", file=sys.stderr)
            if isinstance(err, RoundFailed):
                print("fedlabel: the rounds before it are in summary.json; resume=true continues from the last checkpoint",
                      file=sys.stderr)  # fmt: skip
            status["code"] = 2
            return
        print(format_table(summary["rounds"]))
        out = Path(summary["config"]["output_dir"])
        acc = summary["final_accuracy"]
        evaluated = [r["accuracy"] for r in summary["rounds"] if r["accuracy"] is not None][-10:]
        if acc is None:
            print("final accuracy: n/a")
        else:
            print(f"final accuracy: {acc:.4f}  (mean of the last {len(evaluated)} evaluations: "
                  f"{sum(evaluated) / len(evaluated):.4f}; {summary['wall_seconds']:.1f} s)")
        print(f"outputs: {out}/summary.json, rounds.csv, accuracy.png, clients.json, model.pt")

    multirun = any(a in ("-m", "--multirun") for a in argv)
    given = [a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")]
    if given and not multirun and not any(a.startswith("hydra.run.dir=") for a in argv):
        argv = [*argv, f"hydra.run.dir={given[-1]}"]  # Hydra's own files go with the outputs
    sys.argv = [sys.argv[0], *argv]
    _main()
    return status["code"]


def flower_config_toml() -> str:
    """The [tool.flwr.app.config] section: every run_config key with its schema default."""
    import tomli_w

    from fedlabel.config import default_run_config, unflatten

    return tomli_w.dumps({"tool": {"flwr": {"app": {"config": unflatten(default_run_config())}}}})


FLOWER_CONFIG_MARK = "# Generated from the schema by `fedlabel flower-config --write` (a test checks it).\n"


def write_flower_config(pyproject: Path) -> None:
    """Replace the generated section (from the marker to the next non-config table)."""
    text = pyproject.read_text()
    start = text.index(FLOWER_CONFIG_MARK)
    rest = text[start + len(FLOWER_CONFIG_MARK) :]
    tables = [i for i in range(len(rest)) if rest.startswith("\n[tool.", i) and not rest.startswith("\n[tool.flwr.app.config", i)]
    end = tables[0] + 1 if tables else len(rest)
    pyproject.write_text(text[:start] + FLOWER_CONFIG_MARK + flower_config_toml() + "\n" + rest[end:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "simulate":
        return _simulate(rest)
    if cmd == "privacy-sweep":
        from fedlabel.privacy.sweep import main as sweep_main

        return sweep_main(rest)
    if cmd == "flower-config":
        if "--write" in rest:
            write_flower_config(Path(__file__).resolve().parents[1] / "pyproject.toml")
        else:
            print(flower_config_toml(), end="")
        return 0
    print(f"fedlabel: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
