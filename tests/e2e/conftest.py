"""Fixtures of the end-to-end tests: real `healerd run` subprocesses, always stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .aws_fixtures import LoopThread, Moto
from .helpers import DaemonProcess, StartDaemon, write_config
from .test_alerting import Loopback, Receiver


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """`start_daemon(config_dict, wait="ready")` writes the config to tmp_path and runs healerd on it.

    Every process started here is terminated (SIGTERM, then SIGKILL) when the test ends, whatever happened.
    """
    started: list[DaemonProcess] = []

    def start(config: dict[str, Any], wait: str = "ready", name: str = "healerd") -> DaemonProcess:
        path = write_config(tmp_path / f"{name}.yaml", config)
        port = int(config["daemon"]["listen"].rpartition(":")[2])
        daemon = DaemonProcess(path, port, tmp_path / f"{name}.log")
        started.append(daemon)
        daemon.start()
        if wait == "ready":
            daemon.wait_ready()
        elif wait == "listening":
            daemon.wait_listening()
        return daemon

    yield start
    unclean = []
    for daemon in started:
        was_running = daemon.alive()
        status = daemon.stop()
        if was_running and (status != 0 or "Traceback" in daemon.output()):
            unclean.append(f"{daemon.config_path.name}: exit status {status} on SIGTERM\n{daemon.describe()}")
    if unclean:
        pytest.fail("healerd did not stop cleanly:\n" + "\n".join(unclean), pytrace=False)


@pytest.fixture(scope="module")
def hub() -> Iterator[LoopThread]:
    """An event loop in a thread for the AWS tests' loopback servers (the recording proxy, health endpoints)."""
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    """moto's ThreadedMotoServer on loopback: the AWS endpoint, one per test module."""
    server = Moto()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback that records every message (its id, status and body)."""
    loopback = Loopback()
    try:
        yield loopback.serve(Receiver())
    finally:
        loopback.close()
