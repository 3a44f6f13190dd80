"""Pytest fixtures for the simulated OpenAI upstream (listed in the project's `pytest_plugins`).

All fixtures are function-scoped: every test gets a fresh, deterministic world.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batches.simulator import SimClock, Simulator, SimulatorServer

MakeSimServer = Callable[..., SimulatorServer]


@pytest.fixture
def sim_clock() -> SimClock:
    return SimClock()


@pytest.fixture
def simulator(sim_clock: SimClock) -> Simulator:
    return Simulator(batches=300, seed=7, clock=sim_clock, cancel_delay=5)


@pytest.fixture
def make_sim_server() -> Iterator[MakeSimServer]:
    """Start a server on a free port: `make_sim_server(simulator=sim)` or `make_sim_server(batches=10_000)`.

    Keyword arguments other than `simulator` and `verbose` go to `Simulator`. Every server started
    here is stopped when the test ends.
    """
    servers: list[SimulatorServer] = []

    def make(*, simulator: Simulator | None = None, verbose: bool = False, **kwargs: Any) -> SimulatorServer:
        if simulator is not None and kwargs:
            raise TypeError("pass either simulator= or Simulator keyword arguments, not both")
        # `is None`, not `or`: a simulator with no batches is falsy (it has a length).
        world = simulator if simulator is not None else Simulator(**kwargs)
        server = SimulatorServer(world, verbose=verbose).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def sim_server(simulator: Simulator, make_sim_server: MakeSimServer) -> SimulatorServer:
    return make_sim_server(simulator=simulator)
