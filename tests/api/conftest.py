"""Job servers for the API tests: real uvicorn servers in threads on 127.0.0.1 (free ports),
each over its own data directory. `idle_server` never starts jobs (API behaviour only);
`start_server` runs the scheduler with real `openrft train` workers. Teardown stops the
servers and kills any worker still alive."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import Served, serve_dir
from .processes import ServerProcess, kill_workers


@pytest.fixture
def idle_server(tmp_path) -> Iterator[Served]:
    served = serve_dir(tmp_path / "data", start_runner=False)
    yield served
    served.stop()


@pytest.fixture
def start_server(tmp_path) -> Iterator[Callable[..., Served]]:
    """Start servers (same data dir unless told); all are stopped at teardown."""
    started: list[Served] = []

    def start(concurrency: int = 1, data_dir: Path | None = None) -> Served:
        served = serve_dir(data_dir or tmp_path / "data", concurrency)
        started.append(served)
        return served

    yield start
    for served in reversed(started):
        served.stop()


@pytest.fixture
def servers(tmp_path) -> Iterator[list[ServerProcess]]:
    """Server processes a test starts over tmp_path/data; killed, with their workers, after."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.kill()
    kill_workers(tmp_path / "data")
