"""A faithful, deterministic stand-in for the OpenAI Batch API (stdlib only, no Django).

sim = Simulator(batches=300, seed=1)
with SimulatorServer(sim) as server:
    ...  # point the OpenAI client at server.url with api key "sk-sim-local"
    sim.clock.advance(60)  # batches progress with simulated time
"""

from __future__ import annotations

from .clock import SimClock
from .faults import ApiError, Fault
from .files import MAX_CONTENT_LINES
from .plans import CANCELLABLE, STATUSES, TERMINAL, USAGE_CUTOFF
from .server import SimulatorServer, mask_key
from .world import Simulator

__all__ = [
    "CANCELLABLE",
    "MAX_CONTENT_LINES",
    "STATUSES",
    "TERMINAL",
    "USAGE_CUTOFF",
    "ApiError",
    "Fault",
    "SimClock",
    "Simulator",
    "SimulatorServer",
    "mask_key",
]
