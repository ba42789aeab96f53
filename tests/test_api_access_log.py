"""A refused API request is logged once per source address and minute (healerd.api_access.Gate), not once per
request: a script retrying a bad token every second must not flood the log; and each is counted."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from healerd.access import AccessBook, Scope, add
from healerd.api_access import Gate
from healerd.config.models import DaemonConfig
from healerd.metrics import Metrics


class Peer:
    """The transport of a mocked request: who it comes from."""

    def __init__(self, address: str) -> None:
        self.address = address

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.address, 40000) if name == "peername" else default


def request(token: str, source: str = "127.0.0.1") -> object:
    return make_mocked_request(
        "POST", "/api/v1/mode", headers={"Authorization": f"Bearer {token}"}, transport=Peer(source)
    )


async def test_refusals_are_logged_once_per_source_a_minute_and_all_counted(tmp_path: Path) -> None:
    access = tmp_path / "access.yaml"
    good = add(access, "oncall-primary", Scope.OPERATE)
    book = AccessBook(access)
    registry = CollectorRegistry()
    gate = Gate(Metrics(registry))
    daemon = DaemonConfig(access_file=access)
    with capture_logs() as logs:
        for second in range(30):  # a script retrying a revoked token every second, from one address
            verdict = await gate.admit(request("hk_oncall-primary_wrong"), daemon, book, 1000.0 + second)  # type: ignore[arg-type]
            assert verdict.status == 401
        await gate.admit(request("hk_x_bogus", "127.0.0.2"), daemon, book, 1010.0)  # type: ignore[arg-type]
        await gate.admit(request("hk_oncall-primary_wrong"), daemon, book, 1061.0)  # type: ignore[arg-type]
        allowed = await gate.admit(request(good), daemon, book, 1062.0)  # type: ignore[arg-type]
    refused = [e for e in logs if e["event"] == "API request refused"]
    assert [(e["source"], e["credential"]) for e in refused] == [
        ("127.0.0.1", "invalid"),
        ("127.0.0.2", "invalid"),
        ("127.0.0.1", "invalid"),  # a minute later: said again
    ]
    assert allowed.allowed and allowed.credential == "oncall-primary"
    count = registry.get_sample_value
    assert count("healerd_api_requests_total", {"credential": "invalid", "outcome": "unauthenticated"}) == 32
    assert count("healerd_api_requests_total", {"credential": "oncall-primary", "outcome": "allowed"}) == 1
