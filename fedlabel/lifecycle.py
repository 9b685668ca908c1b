"""A run's hold on its output directory, and how a run is stopped.

- :func:`claim_output_dir`: refuses a folder that holds another run (unless resume or
  overwrite), removes the old run's files with overwrite, and locks the folder for this process
  (an ``flock`` the kernel releases however the process ends, so a lock is never stale).
- :func:`stop_on_signals`: SIGTERM, SIGINT and SIGHUP raise :class:`RunStopped` in the main
  thread, so the run's ``finally`` blocks stop what it started and the summary says ``stopped``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from fedlabel.errors import ConfigError

LOCK_FILE = ".lock"
# Everything a run writes into its output_dir (Hydra's .hydra/ and cli.log belong to the
# command that is starting now, so they are not an old run's files).
RUN_FILES = (
    "summary.json",
    "rounds.csv",
    "accuracy.png",
    "reliability.png",
    "clients.json",
    "model.pt",
    "checkpoint.pt",
    "checkpoint.pt.tmp",
    "summary.json.tmp",
    "rounds.csv.tmp",
    "flower",
    "tensorboard",
)
# Set by the process that holds the lock for the processes it starts (the Flower engine's
# ServerApp), which then write into the folder without claiming it again.
LOCK_ENV = "FEDLABEL_OUTPUT_LOCKED"
# Held locks of this process, by folder: a folder is claimed once per process.
_held: dict[Path, int] = {}


class RunStopped(BaseException):
    """The run was asked to stop by signal ``signum``; raised in the main thread. A
    BaseException, like KeyboardInterrupt, so that no ``except Exception`` of a round swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def describe_run(out: Path) -> str | None:
    """'status completed, 10 of 10 rounds' for a folder holding a run, else None. Called with
    the folder's lock held or free, so a run still marked running has no live process."""
    summary, checkpoint = out / "summary.json", out / "checkpoint.pt"
    if not summary.exists() and not checkpoint.exists():
        return None
    try:
        s = json.loads(summary.read_text())
        status = s.get("status", "?") + (
            " but its process is gone" if s.get("status") == "running" else ""
        )
        return f"status {status}, {len(s.get('rounds', []))} of {s['config']['rounds']} rounds"
    except (OSError, ValueError, KeyError, TypeError):
        return "a checkpoint.pt" if checkpoint.exists() else "an unreadable summary.json"


def check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """ConfigError if ``out`` holds a run and neither resume nor overwrite says what to do."""
    held = describe_run(out)
    if held and not resume and not overwrite:
        raise ConfigError(
            f"output_dir: {out} already holds a run ({held}); resume=true continues it, "
            "overwrite=true replaces it, or choose another output_dir"
        )


def _lock(out: Path) -> int:
    """Lock ``out`` for this process; ConfigError naming the holder's pid (which it wrote into
    the lock file) if another live process holds it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"output_dir: cannot create {out} ({err.strerror or err})") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"output_dir: {out} is in use by a running fedlabel run (pid {holder}); "
            f"wait for it, stop it (kill {holder}) or choose another output_dir"
        ) from None
    return fd


def check_claimable(out: Path, *, resume: bool, overwrite: bool) -> None:
    """The checks of :func:`claim_output_dir` without touching anything (for a command that
    must refuse a folder before it writes into it)."""
    out = out.expanduser().resolve()
    if not out.is_dir():
        return
    if (out / LOCK_FILE).exists():
        os.close(_lock(out))
    check_output_dir(out, resume=resume, overwrite=overwrite)


def claim_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Make ``output_dir`` this run's: lock it, refuse it if it holds another run, and with
    ``overwrite`` remove that run's files (so a folder never mixes two runs). Idempotent within
    a process; a no-op where the process that started this one holds the lock (LOCK_ENV)."""
    out = Path(output_dir).expanduser().resolve()
    if out in _held or os.environ.get(LOCK_ENV) == str(out):
        return out
    fd = _lock(out)
    try:
        check_output_dir(out, resume=resume, overwrite=overwrite)
    except ConfigError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    if overwrite and not resume:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    _held[out] = fd
    return out


def release_output_dir(output_dir: str | Path) -> None:
    fd = _held.pop(Path(output_dir).expanduser().resolve(), None)
    if fd is not None:
        os.close(fd)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, the first SIGTERM/SIGINT/SIGHUP raises RunStopped; later ones are
    ignored while the run cleans up. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = {"signal": None}

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        if stopping["signal"] is None:
            stopping["signal"] = signum
            raise RunStopped(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
