"""`manage.py simulate_upstream`: serve a simulated OpenAI Batch API for local use and demos."""

from __future__ import annotations

import signal
import threading
from argparse import ArgumentParser
from collections.abc import Callable
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand

from batches.simulator import Simulator, SimulatorServer

DEFAULT_KEY = "sk-sim-local"


def build_simulator(options: dict[str, Any]) -> Simulator:
    return Simulator(
        batches=options["batches"],
        seed=options["seed"],
        cancel_delay=options["cancel_delay"],
        api_keys=options["api_key"] or [DEFAULT_KEY],
        active=options["active"],
        arrival_interval=options["arrival_interval"],
        id_prefix=options["id_prefix"],
    )


def serve_until_stopped(server: SimulatorServer, stop: threading.Event, write: Callable[[str], None]) -> None:
    """Serve until `stop` is set (by SIGINT/SIGTERM when run from the command line)."""
    keys = sorted(server.simulator.api_keys)
    server.start()
    try:
        write(f"Simulated OpenAI Batch API with {len(server.simulator)} batches at {server.url}")
        write(f"  OPENAI_BASE_URL={server.url} OPENAI_API_KEY={keys[0] if keys else ''}")
        write(f"  control: {server.root_url}/_sim/stats (Ctrl-C to stop)")
        stop.wait()
    finally:
        server.stop()
    write("Simulator stopped.")


class Command(BaseCommand):
    help = (
        "Serve a simulated OpenAI Batch API (batches and files, with live progress, cancels and "
        "injectable faults) for development and demos. Stops on SIGINT/SIGTERM."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Interface to bind (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8001, help="Port to bind, 0 for any (default 8001).")
        parser.add_argument("--batches", type=int, default=300, help="Batches in the account (default 300).")
        parser.add_argument("--seed", type=int, default=1, help="Seed: same seed, same batches (default 1).")
        parser.add_argument(
            "--cancel-delay",
            type=float,
            default=10.0,
            help="Seconds a cancel stays 'cancelling' before 'cancelled' (default 10).",
        )
        parser.add_argument(
            "--arrival-interval",
            type=float,
            default=60.0,
            help="A new batch arrives every N seconds; 0 disables arrivals (default 60).",
        )
        parser.add_argument(
            "--api-key",
            action="append",
            default=None,
            help=f"Accepted API key; repeat for several (default {DEFAULT_KEY}).",
        )
        parser.add_argument(
            "--active",
            type=int,
            default=None,
            help="Batches running at start (default about 3%% of --batches, at least 3).",
        )
        parser.add_argument(
            "--id-prefix",
            default="",
            help="Mixed into ids so two simulated accounts never share ids (default '').",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        simulator = build_simulator(options)
        server = SimulatorServer(
            simulator, options["host"], options["port"], verbose=options["verbosity"] >= 2
        )
        stop = threading.Event()
        restore = _install_stop_handlers(stop)
        try:
            serve_until_stopped(server, stop, self.stdout.write)
        finally:
            restore()


def _install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """Make SIGINT and SIGTERM end the serve loop cleanly (exit code 0, no traceback)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # Signals can only be handled on the main thread.

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
