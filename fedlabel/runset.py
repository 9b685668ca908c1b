"""A set of resumable runs, each one `fedlabel simulate` command, and the archive that keeps them.

What the long studies (benchmarks/accuracy.py, `fedlabel privacy-sweep`) share, so that they can
be filled over several sessions or machines:

- a :class:`Run` is a folder name and the Hydra overrides of one `fedlabel simulate` (``rounds=``
  among them);
- a :class:`Store` holds the run folders (``out``: checkpoints and logs, not committed) and an
  archive (one gzipped summary.json per completed run, committed); a completed run is not run
  again, an interrupted or shorter one continues from its checkpoint (``resume=true``; a larger
  ``rounds`` extends a finished run);
- a finished run counts only if its summary's config is what its overrides compose to now
  (fedlabel.checkpoint.config_differences: rounds aside, and where and how it ran): otherwise
  the study stops with one line naming the folder, rather than mixing settings;
- :func:`run_all` runs what is left, ``jobs`` at a time, each in its own process with one torch
  thread, and says how far it has got after every run; ``touch <out>/STOP`` lets the runs in
  progress finish and starts no new one.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fedlabel.checkpoint import config_differences


@dataclass(frozen=True)
class Run:
    name: str  # run directory name under the store's ``out``
    overrides: tuple[str, ...]  # of `fedlabel simulate`; ``rounds=`` among them

    @property
    def rounds(self) -> int:
        return int(self.settings()["rounds"])

    def settings(self) -> dict[str, str]:
        """The overrides as key -> value (the last one of a key wins, as in Hydra)."""
        return dict(o.split("=", 1) for o in self.overrides)

    def command(self, out: Path) -> list[str]:
        return ["fedlabel", "simulate", *self.overrides, f"output_dir={out / self.name}"]


COMPOSING = threading.Lock()  # Hydra's compose is not thread-safe (its global state)


@cache
def intended(run: Run) -> dict:
    """The config the run's overrides compose to (what its summary's config must say)."""
    from fedlabel.api import compose
    from fedlabel.config import config_from_dict, config_to_dict
    from fedlabel.errors import ConfigError

    try:
        with COMPOSING:
            composed = compose([*run.overrides, "output_dir=."])
        return config_to_dict(config_from_dict(composed))
    except ConfigError as err:
        raise SystemExit(f"{run.name}: {err}") from err


@dataclass(frozen=True)
class Store:
    """Where runs are: ``out`` holds their folders (checkpoints, logs; not committed), ``archive``
    (if set) one gzipped summary.json per completed run (committed; read when ``out`` lacks the
    run).
    """

    out: Path
    archive: Path | None = None
    checked: bool = True  # False: trust a finished run's name (an archive of older runs)

    def summary(self, run: Run) -> dict | None:
        try:
            return json.loads((self.out / run.name / "summary.json").read_bytes())
        except (OSError, ValueError):
            pass
        data = self.archived(run)
        return json.loads(data) if data is not None else None

    def archived(self, run: Run) -> bytes | None:
        """The run's archived summary.json, or None (none, or unreadable: said, and then run
        again)."""
        path = self.archive / f"{run.name}.json.gz" if self.archive else None
        if path is None or not path.is_file():
            return None
        try:
            data = gzip.decompress(path.read_bytes())
            json.loads(data)
            return data
        except (OSError, ValueError, EOFError) as e:
            print(f"unreadable, ignored: {path} ({e})", file=sys.stderr, flush=True)
            return None

    def completed(self, run: Run, s: dict | None = None) -> bool:
        """A finished run with the same rounds (fewer rounds: it goes on) and, where the
        overrides say them, algorithm and seed; ``s``: its summary, if already read. Where
        ``checked``, one computed with other settings than the run's overrides compose to (where
        and how it ran aside: checkpoint.MAY_DIFFER) is an error naming it."""
        s = s or self.summary(run)
        if s is None or s["status"] != "completed":
            return False
        want, cfg = run.settings(), s["config"]
        diffs = self.checked and config_differences(cfg, intended(run), saved_as="run")
        if diffs:
            folder = self.out / run.name
            archived = f"{self.archive}/{run.name}.json.gz"
            where = folder if (folder / "summary.json").is_file() else archived
            raise SystemExit(
                f"{where}: a completed run with other settings than this study's:"
                f" {'; '.join(diffs)}; move it away or use another --out and --archive"
            )
        return (
            cfg["algorithm"]["name"] == want.get("algorithm", cfg["algorithm"]["name"])
            and cfg["rounds"] == run.rounds
            and cfg["seed"] == int(want.get("seed", cfg["seed"]))
        )

    def keep(self, run: Run) -> None:
        """Copy the run's summary into the archive if it completed there in ``out`` and is not
        archived yet."""
        path = self.out / run.name / "summary.json"
        if self.archive is None or not path.is_file():
            return
        data = path.read_bytes()
        try:
            finished = self.completed(run, json.loads(data))
        except ValueError:  # not JSON: not a finished run
            return
        if not finished or self.archived(run) == data:
            return
        self.archive.mkdir(parents=True, exist_ok=True)
        tmp = self.archive / f"{run.name}.json.gz.tmp"
        tmp.write_bytes(gzip.compress(data, mtime=0))
        tmp.replace(self.archive / f"{run.name}.json.gz")

    def execute(self, run: Run, extra: list[str]) -> str | None:
        """Run (or continue) one run with ``extra`` overrides (evaluation settings the config
        check ignores); the error text if it failed."""
        if (self.out / "STOP").exists():
            print(f"not started: {run.name} ({self.out / 'STOP'} exists)", flush=True)
            return None
        (self.out / run.name).mkdir(parents=True, exist_ok=True)
        with open(
            self.out / run.name / ".benchmark.lock", "w"
        ) as lock:  # beside the run's own .lock; freed on exit
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"skipped: {run.name} (another process is running it)", flush=True)
                return None
            if self.completed(run):
                return None
            cmd = [sys.executable, "-m", "fedlabel", *run.command(self.out)[1:], *extra]
            if (self.out / run.name / "checkpoint.pt").exists():
                cmd.append("resume=true")
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                last = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
                print(f"FAILED: {run.name}: {last[0]}", flush=True)
                return f"{shlex.join(cmd)}\n{proc.stderr[-2000:]}"
            self.keep(run)
            return None


def run_all(store: Store, runs: list[Run], *, extra: list[str], jobs: int) -> list[str]:
    """Run (or continue) those of ``runs`` not completed, ``jobs`` at a time, one progress line
    per finished run; their errors."""
    todo = list({r.name: r for r in runs if not store.completed(r)}.values())
    print(f"{len(todo)} of {len({r.name for r in runs})} runs to do", flush=True)
    done, lock, start = [0], threading.Lock(), time.perf_counter()

    def one(run: Run) -> str | None:
        began = time.perf_counter()
        error = store.execute(run, extra)
        with lock:
            done[0] += 1
            elapsed = time.perf_counter() - start
            left = elapsed / done[0] * (len(todo) - done[0]) / 60
            status = "failed" if error else "done" if store.completed(run) else "not run"
            print(
                f"[{done[0]}/{len(todo)}] {status}: {run.name}"
                f" ({time.perf_counter() - began:.0f} s; ~{left:.0f} min left at this pace)",
                flush=True,
            )
        return error

    with ThreadPoolExecutor(jobs) as pool:
        errors = [e for e in pool.map(one, todo) if e]
    for e in errors:
        print(e, file=sys.stderr)
    return errors
