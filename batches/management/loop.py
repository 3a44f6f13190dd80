"""What the worker commands share: a loop in the style of healthchecks' `sendalerts`.

SIGTERM or SIGINT asks it to stop; it finishes the piece of work at hand (`stops_after`), and
its sleeps between rounds end at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from django.core.management.base import BaseCommand


class LoopCommand(BaseCommand):
    stops_after = "the current piece of work"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._stop = threading.Event()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def stop_on_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stdout.write(f"received {signal.Signals(signum).name}, stopping after {self.stops_after}")
        self._stop.set()

    def sleep(self, seconds: float) -> None:
        """Between rounds: over at once when a stop is asked for."""
        self._stop.wait(seconds)
