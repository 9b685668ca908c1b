"""Run a command so that it, and every process it starts, ends with the run that started it.

    python -m fedlabel.engines.reaper PARENT_PID -- COMMAND [ARGS...]

Flower's SuperLink starts its SuperExec in a new session, which starts the simulation, which
starts Ray's daemons and workers: killing the SuperLink's process group reaches none of them.
The reaper is a Linux child subreaper (prctl PR_SET_CHILD_SUBREAPER): every process below it
that loses its parent is re-parented to it, so the whole tree stays findable under its pid. It
ends that tree (SIGSTOP every member so none can start more, then SIGKILL, until none is left)
when the command exits, when it receives SIGTERM/SIGINT/SIGHUP, and when PARENT_PID dies
(the kernel's parent-death signal, with a poll of the parent pid as a second guard), so a
SIGKILLed ``fedlabel simulate`` leaves nothing running. It exits with the command's exit code,
or 128 + the signal that stopped it. Outputs survive a SIGKILL of the tree: summary.json and
checkpoint.pt are written by atomic rename."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.2


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children_of() -> dict[int, list[int]]:
    """{pid: [child pids]} of every process visible in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])  # the comm field may hold spaces
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = children_of(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def end_tree(root: int) -> None:
    """SIGSTOP then SIGKILL every descendant of ``root`` (this process) and reap them."""
    for _ in range(100):
        members = descendants(root)
        if not members:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in members:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.02)
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(
            "usage: python -m fedlabel.engines.reaper PARENT_PID -- COMMAND [ARGS...]",
            file=sys.stderr,
        )
        return 2
    parent, command = int(argv[0]), argv[2:]
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stop = {"signal": 0}

    def handler(signum, frame):  # noqa: ARG001
        stop["signal"] = signum

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, handler)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 128 + signal.SIGTERM
    child = subprocess.Popen(command)
    while child.poll() is None and not stop["signal"] and os.getppid() == parent:
        time.sleep(POLL_S)
    end_tree(os.getpid())
    child.wait()
    if stop["signal"] or os.getppid() != parent:
        return 128 + (stop["signal"] or signal.SIGTERM)
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


def reaped(command: list[str]) -> list[str]:
    """``command`` under a reaper whose parent is this process."""
    return [sys.executable, "-m", "fedlabel.engines.reaper", str(os.getpid()), "--", *command]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
