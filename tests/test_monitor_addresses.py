"""A provider's machine whose address cannot go into a URL or a load balancer's command is said once (per
address), and its checks run and report rather than crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from remediation_rig import make_rig
from structlog.testing import capture_logs

from healerd.machines import Lifecycle, Machine
from healerd.results import Status


async def test_an_unusable_address_from_a_provider_is_said_once_per_address(tmp_path: Path) -> None:
    rig = await make_rig(tmp_path)
    machines: list[Machine] = []

    async def listed(service: Any) -> list[Machine]:
        return list(machines)

    rig.provider.list_machines = listed  # type: ignore[method-assign]
    try:
        with capture_logs() as logs:
            machines[:] = [Machine("web", "web-x", "web x;disable:8080", Lifecycle.IN_SERVICE)]
            for _ in range(3):
                await rig.monitor.apply(rig.config)
            machines[:] = [Machine("web", "web-x", "10.0.0.5:8080\nshow info", Lifecycle.IN_SERVICE)]
            await rig.monitor.apply(rig.config)
            machines[:] = [Machine("web", "web-x", "10.0.0.5:8080", Lifecycle.IN_SERVICE)]
            await rig.monitor.apply(rig.config)
            machines[:] = [Machine("web", "web-y", "10.0.0.5:80x", Lifecycle.IN_SERVICE)]
            await rig.monitor.apply(rig.config)  # a URL cannot be made of it: the check stands, and says why
            bound = [bc for key, bc in rig.monitor.checks.items() if key.machine == "web-y"]
            assert bound, "web-y's checks are not bound"
            result = await bound[0].check.run()
            assert result.status is Status.UNKNOWN and "cannot run" in result.message, result
        said = [e for e in logs if e["event"] == "a machine's address is unusable"]
        assert [e["address"] for e in said] == ["web x;disable:8080", "10.0.0.5:8080\nshow info", "10.0.0.5:80x"]
        assert "is not an IP address or a host name" in said[0]["problem"], said[0]
        assert said[0]["machine"] == "web-x" and said[0]["service"] == "web"
    finally:
        await rig.close()
