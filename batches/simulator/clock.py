"""Simulated time: real time plus an offset that tests and the demo can move forward."""

from __future__ import annotations

import threading
import time


class SimClock:
    """A clock that follows real time but can be advanced (never rewound) or frozen.

    Batches compute their state from the clock on every read, so moving the clock is all it takes
    to make them progress: no background thread is involved.
    """

    def __init__(self, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0 if start is None else start - time.time()
        self._frozen_at: float | None = None

    def now(self) -> float:
        with self._lock:
            if self._frozen_at is not None:
                return self._frozen_at
            return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        """Move simulated time forward and return the new now."""
        if seconds < 0:
            # Rewinding would let a terminal batch become active again, which the API never does.
            raise ValueError("SimClock can only move forward")
        with self._lock:
            self._offset += seconds
            if self._frozen_at is not None:
                self._frozen_at += seconds
                return self._frozen_at
            return time.time() + self._offset

    def freeze(self) -> None:
        """Stop following real time (handy for exact assertions); advance() still works."""
        with self._lock:
            if self._frozen_at is None:
                self._frozen_at = time.time() + self._offset
