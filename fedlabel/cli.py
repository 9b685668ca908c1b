"""`fedlabel` command line.

fedlabel simulate [hydra overrides]   run a simulation (engine=flower by default)
fedlabel flower-config [--write]      print (or rewrite in pyproject.toml) the
                                      [tool.flwr.app.config] section from the schema
fedlabel deploy <command> ...         run on real sites (server, join, submit, ...;
                                      `fedlabel deploy -h`, docs/deploy.md)
fedlabel privacy-sweep [options] [overrides]
                                      privacy-utility sweep -> docs/privacy.md
                                      (`fedlabel privacy-sweep --help`)
fedlabel compare DIR... [--last N] [--out DIR]
                                      one table (compare.md, .csv) and accuracy plot
                                      (compare.png) across run folders
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

USAGE = __doc__


def _precheck(argv: list[str]) -> str | None:
    """Compose the config as Hydra will, before Hydra writes anything: an unknown key or group
    option, or an output_dir that holds another run or is in use, gives one line (None: fine).
    Only for plain overrides (no multirun, no Hydra flags)."""
    from fedlabel.api import hydra_config
    from fedlabel.errors import ConfigError
    from fedlabel.lifecycle import check_claimable

    if any(a.startswith("-") for a in argv):
        return None
    try:
        cfg = hydra_config(argv)
    except ConfigError as err:
        return str(err)
    given = [a.split("=", 1)[1] for a in argv if a.startswith(("output_dir=", "hydra.run.dir="))]
    if not given:
        return None  # a new timestamped folder
    try:
        Path(given[-1]).expanduser().mkdir(
            parents=True, exist_ok=True
        )  # Hydra would, with a traceback
    except OSError as err:
        return f"output_dir: cannot create {given[-1]} ({err.strerror or err})"
    try:
        check_claimable(
            Path(given[-1]), resume=bool(cfg.get("resume")), overwrite=bool(cfg.get("overwrite"))
        )
    except ConfigError as err:
        return str(err)
    return None


def _simulate(argv: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from fedlabel.api import register_configs, run
    from fedlabel.data import DataError
    from fedlabel.engines.flower import FlowerRunError
    from fedlabel.errors import ConfigError
    from fedlabel.federation import RoundFailed
    from fedlabel.lifecycle import RunStopped
    from fedlabel.report import format_table

    register_configs()
    problem = _precheck(argv)
    if problem:
        print(f"fedlabel: config error: {problem}", file=sys.stderr)
        return 2
    status = {"code": 0}

    @hydra.main(version_base="1.3", config_path="pkg://fedlabel._configs", config_name="config")
    def _main(hcfg: DictConfig) -> None:
        values = OmegaConf.to_container(hcfg, resolve=True)
        try:
            summary = run(values)
        except (ConfigError, DataError, FlowerRunError, RoundFailed, RunStopped) as err:
            kind = next(
                k
                for t, k in (
                    (ConfigError, "config"),
                    (DataError, "data"),
                    (FlowerRunError, "flower"),
                    (RoundFailed, "run"),
                    (RunStopped, "run"),
                )
                if isinstance(err, t)
            )
            print(
                f"fedlabel: {kind} {'stopped' if isinstance(err, RunStopped) else 'error'}: {err}",
                file=sys.stderr,
            )
            if isinstance(err, (RoundFailed, RunStopped)):
                print(
                    "fedlabel: the rounds before it are in summary.json; resume=true continues from"
                    " the last checkpoint",
                    file=sys.stderr,
                )
            status["code"] = 128 + err.signum if isinstance(err, RunStopped) else 2
            return
        print(format_table(summary["rounds"]))
        out = Path(summary["config"]["output_dir"])
        acc = summary["final_accuracy"]
        evaluated = [r["accuracy"] for r in summary["rounds"] if r["accuracy"] is not None][-10:]
        if acc is None:
            print("final accuracy: n/a")
        else:
            print(
                f"final accuracy: {acc:.4f}  (mean of the last {len(evaluated)} evaluations: "
                f"{sum(evaluated) / len(evaluated):.4f}; {summary['wall_seconds']:.1f} s)"
            )
        print(selection_line(summary) or "", end="")
        print(privacy_line(summary) or "", end="")
        print(
            f"outputs: {out}/summary.json, rounds.csv, accuracy.png, reliability.png, clients.json,"
            " model.pt"
        )

    multirun = any(a in ("-m", "--multirun") for a in argv)
    given = [a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")]
    if given and not multirun and not any(a.startswith("hydra.run.dir=") for a in argv):
        argv = [*argv, f"hydra.run.dir={given[-1]}"]  # Hydra's own files go with the outputs
    sys.argv = [sys.argv[0], *argv]
    _main()
    return status["code"]


def _compare(argv: list[str]) -> int:
    import argparse

    from fedlabel.compare import CompareError, compare

    ap = argparse.ArgumentParser(
        prog="fedlabel compare",
        description="One table and one accuracy plot across run folders: the settings that"
        " differ, accuracies, ECE, epsilon, wall time, status.",
    )
    ap.add_argument("folders", nargs="+", metavar="DIR", help="run folders (with summary.json)")
    ap.add_argument(
        "--last", type=int, default=5, help="mean of the last N evaluated rounds' accuracy"
    )
    ap.add_argument(
        "--out", default=None, help="where compare.md/csv/png go (default: the common parent)"
    )
    args = ap.parse_args(argv)
    try:
        print(compare(args.folders, out=args.out, last=args.last), end="")
    except CompareError as err:
        print(f"fedlabel compare: {err}", file=sys.stderr)
        return 2
    return 0


def selection_line(summary: dict[str, Any]) -> str | None:
    """'best validation accuracy 0.8123 (round 27); final test ECE 0.0412\n', or None."""
    parts = []
    if summary.get("best_val_accuracy") is not None:
        parts.append(
            f"best validation accuracy {summary['best_val_accuracy']:.4f} (round"
            f" {summary['best_val_round']})"
        )
    if summary.get("ece") is not None:
        parts.append(f"final test ECE {summary['ece']:.4f}")
    return "; ".join(parts) + "\n" if parts else None


def privacy_line(summary: dict[str, Any]) -> str | None:
    """'privacy: epsilon 2.91 at delta 1e-05 (dpsgd); bag counts: epsilon 1 (label-DP)\n', or
    None."""
    last = summary["rounds"][-1] if summary["rounds"] else {}
    parts = []
    if last.get("epsilon") is not None:
        p = summary["config"]["privacy"]
        parts.append(f"epsilon {last['epsilon']:.3g} at delta {p['delta']:g} ({p['name']})")
    if last.get("proportion_epsilon") is not None:
        parts.append(f"bag counts: epsilon {last['proportion_epsilon']:.3g} (label-DP)")
    return f"privacy: {'; '.join(parts)}\n" if parts else None


def flower_config_toml() -> str:
    """The [tool.flwr.app.config] section: every run_config key with its schema default (each
    algorithm name's own keys in its section, algorithm.<name>)."""
    import tomli_w

    from fedlabel.config import default_run_config, unflatten

    return tomli_w.dumps({"tool": {"flwr": {"app": {"config": unflatten(default_run_config())}}}})


FLOWER_CONFIG_MARK = (
    "# Generated from the schema by `fedlabel flower-config --write` (a test checks it).\n"
)


def write_flower_config(pyproject: Path) -> None:
    """Replace the generated section (from the marker to the next non-config table)."""
    text = pyproject.read_text()
    start = text.index(FLOWER_CONFIG_MARK)
    rest = text[start + len(FLOWER_CONFIG_MARK) :]
    tables = [
        i
        for i in range(len(rest))
        if rest.startswith("\n[tool.", i) and not rest.startswith("\n[tool.flwr.app.config", i)
    ]
    end = tables[0] + 1 if tables else len(rest)
    pyproject.write_text(
        text[:start] + FLOWER_CONFIG_MARK + flower_config_toml() + "\n" + rest[end:]
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "simulate":
        return _simulate(rest)
    if cmd == "deploy":
        from fedlabel.deploy import main as deploy_main

        return deploy_main(rest)
    if cmd == "privacy-sweep":
        from fedlabel.privacy_sweep import main as sweep_main

        return sweep_main(rest)
    if cmd == "compare":
        return _compare(rest)
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
