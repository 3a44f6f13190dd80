"""Child processes of a benchmark run: each in its own session, each stopped when the run ends.

Every child is started in a new session (so a Ctrl-C reaches only the benchmark, which then stops
them in order) and, on Linux, asks the kernel to SIGTERM it if the benchmark itself dies, so
nothing outlives even a `kill -9` of the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PR_SET_PDEATHSIG = 1
STOP_GRACE_SECONDS = 10.0


def free_port() -> int:
    """A port nobody listens on right now (the kernel's choice), on the loopback interface only."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a SIGKILLed benchmark still takes its children along.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


class ChildFailed(RuntimeError):
    pass


@dataclass
class Finished:
    name: str
    returncode: int
    seconds: float
    output: str


class Supervisor:
    """Starts children with logs in the run's directory, and stops every one of them in `stop_all`."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: list[Child] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> Child:
        log = self.logdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(  # noqa: S603 (our own interpreter and scripts, no shell)
                list(args),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def run(self, name: str, args: Sequence[str], env: dict[str, str], timeout: float) -> Finished:
        """Run a short command to its end; a failure raises with the end of its output."""
        started = time.perf_counter()
        child = self.start(name, args, env)
        try:
            returncode = child.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(child)
            raise ChildFailed(f"{name} took longer than {timeout:.0f} s:\n{child.tail()}") from None
        seconds = time.perf_counter() - started
        self.children.remove(child)
        if returncode != 0:
            raise ChildFailed(f"{name} exited with {returncode}:\n{child.tail()}")
        return Finished(name, returncode, seconds, child.output())

    def stop(self, child: Child) -> None:
        """SIGTERM to the child's process group (gunicorn's workers too), then SIGKILL if it lingers."""
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
            try:
                child.popen.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                child.popen.wait(timeout=STOP_GRACE_SECONDS)
        # Workers that outlived their master would still hold the port.
        _signal_group(child.pid, signal.SIGKILL)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        # Newest first: the web server before the simulator it talks to.
        for child in reversed(list(self.children)):
            with contextlib.suppress(Exception):
                self.stop(child)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # The group id is the child's own pid (start_new_session): only what this run started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_for_line(child: Child, pattern: str, timeout: float) -> re.Match[str]:
    """Wait until the child's log has a line matching `pattern` (e.g. the port it listens on)."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = regex.search(child.output())
        if found:
            return found
        if not child.alive():
            raise ChildFailed(f"{child.name} exited with {child.popen.returncode}:\n{child.tail()}")
        time.sleep(0.05)
    raise ChildFailed(f"{child.name} did not print /{pattern}/ within {timeout:.0f} s:\n{child.tail()}")


def wait_for_http(child: Child, url: str, timeout: float) -> None:
    """Wait until `url` answers 200, failing early if the child died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not child.alive():
            raise ChildFailed(f"{child.name} exited with {child.popen.returncode}:\n{child.tail()}")
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise ChildFailed(f"{child.name}: {url} not ready within {timeout:.0f} s ({last}):\n{child.tail()}")
