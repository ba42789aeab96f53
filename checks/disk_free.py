"""Example drop-in Python check: free space of a filesystem on the monitoring host.

Drop a module like this in a folder listed in `daemon.check_paths`; its class becomes a check kind:

    checks:
      - {name: state-disk, kind: disk_free, path: /var/lib/healerd, warn_below: 20%, crit_below: 10%}
"""

from __future__ import annotations

import os

from pydantic import field_validator

from healerd import Check, CheckOptions, CheckResult, PerfDatum


class DiskFreeOptions(CheckOptions):
    path: str = "/"
    warn_below: float = 20.0
    crit_below: float = 10.0

    @field_validator("warn_below", "crit_below", mode="before")
    @classmethod
    def _percent(cls, v: object) -> float:
        text = str(v).strip().removesuffix("%")
        return float(text)


class DiskFreeCheck(Check[DiskFreeOptions]):
    kind = "disk_free"
    Config = DiskFreeOptions

    async def run(self) -> CheckResult:
        st = os.statvfs(self.config.path)
        free_pct = 100.0 * st.f_bavail / st.f_blocks if st.f_blocks else 0.0
        perf = (
            PerfDatum(
                "free",
                round(free_pct, 2),
                "%",
                str(self.config.warn_below),
                str(self.config.crit_below),
                0.0,
                100.0,
            ),
        )
        message = f"{free_pct:.1f}% free on {self.config.path}"
        if free_pct < self.config.crit_below:
            return CheckResult.critical(message, perf)
        if free_pct < self.config.warn_below:
            return CheckResult.warning(message, perf)
        return CheckResult.ok(message, perf)
