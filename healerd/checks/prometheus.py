"""`prometheus` check: what Prometheus already knows about a machine, as a check result. An instant query,
templated per machine (`{id}`, `{address}`, `{host}` …), must return one value; it is compared with Nagios
ranges (`critical` first, then `warning`). No data, an error of the query or of Prometheus, or no answer in
time is UNKNOWN with the reason: it never remediates on its own."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.parse

from pydantic import field_validator
from yarl import URL

from .._neterrors import BodyCut, Disconnected, InvalidResponse, describe
from .._urls import HttpUrl
from ..durations import format_duration, parse_duration
from ..results import CheckResult, PerfDatum, Status
from ..targets import Target
from ._http1 import build_request, endpoint
from .base import Check, CheckEnv, CheckOptions
from .nagios import Range

#: the largest answer read (a query meant for one machine that matches thousands of series is cut, and said so)
MAX_ANSWER = 1 << 20


class PrometheusConfig(CheckOptions):
    url: HttpUrl  # Prometheus's base URL, e.g. http://127.0.0.1:9090
    query: str
    warning: str | None = None
    critical: str | None = None
    tls_verify: bool = True
    #: batch: one query for every machine (a query that does not name the machine), the machine's value taken
    #: from the series whose `batch_label` is `batch_value` (templated: "{id}", "{address}" …)
    batch_label: str | None = None
    batch_value: str = "{id}"
    #: a batched answer serves the machines checked within this long of it
    batch_window: float = 5.0

    @field_validator("batch_window", mode="before")
    @classmethod
    def _window(cls, v: object) -> float:
        return parse_duration(v, at_most=3600, what="batch_window")

    @field_validator("warning", "critical")
    @classmethod
    def _range(cls, v: str | None) -> str | None:
        if v is not None:
            Range.parse(v)
        return v

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the query is empty: write a PromQL expression that gives one value per machine")
        return v


class PrometheusCheck(Check[PrometheusConfig]):
    kind = "prometheus"
    Config = PrometheusConfig
    timeout_status = Status.UNKNOWN  # Prometheus not answering says nothing about the machine
    uses_socket = True

    def __init__(self, config: PrometheusConfig, target: Target, *, env: CheckEnv) -> None:
        super().__init__(config, target, env=env)
        url = URL(config.url)
        self._key, host_header = endpoint(url)
        path = url.raw_path.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": config.query})
        self._request = build_request("GET", path, host_header, {"Accept": "application/json"}, None, close=False)
        self._ssl = env.tls_context(config.tls_verify) if url.scheme == "https" else None
        self._warning = Range.parse(config.warning) if config.warning else None
        self._critical = Range.parse(config.critical) if config.critical else None

    async def run(self) -> CheckResult:
        started = time.perf_counter()
        answer = await (self._batched() if self.config.batch_label else self._fetch())
        if isinstance(answer, CheckResult):
            return answer
        if self.config.batch_label:
            return self._judge(_pick(answer, self.config.batch_label, self.config.batch_value), started)
        return self._judge(_value(answer), started)

    async def _fetch(self) -> dict[str, object] | CheckResult:
        """The query's answer (its `data`), or the UNKNOWN result saying why there is none."""
        try:
            response = await self.env.http_pool().request(
                self._key,
                self._request,
                head=False,
                keep=MAX_ANSWER,
                reuse=True,  # one kept-alive connection to Prometheus serves the checks of every machine
                ssl_context=self._ssl,
                server_hostname=self._key[1],
                retry=True,
            )
        except (OSError, InvalidResponse, Disconnected, BodyCut) as exc:
            return CheckResult.unknown(f"Prometheus at {self.config.url}: {describe(exc)}")
        try:
            answer = json.loads(response.body)
        except ValueError:
            return CheckResult.unknown(f"Prometheus answered HTTP {response.status} without JSON")
        if response.status != 200 or answer.get("status") != "success":
            return CheckResult.unknown(
                f"the query failed (HTTP {response.status}): {answer.get('error', 'no error text')}"
            )
        data = answer.get("data")
        return data if isinstance(data, dict) else CheckResult.unknown("Prometheus answered without data")

    async def _batched(self) -> dict[str, object] | CheckResult:
        """One query for every machine checked within batch_window of it (same Prometheus, same query)."""
        key = ("prometheus", self.config.url, self.config.query)
        now = time.monotonic()
        entry = self.env.shared.get(key)
        if not (isinstance(entry, tuple) and now - entry[0] < self.config.batch_window):
            entry = (now, asyncio.ensure_future(self._fetch()))
            self.env.shared[key] = entry
        answer: dict[str, object] | CheckResult = await asyncio.shield(entry[1])
        return answer

    def _judge(self, value: float | str, started: float) -> CheckResult:
        if isinstance(value, str):
            return CheckResult.unknown(value)
        took = format_duration(time.perf_counter() - started)
        perf = (PerfDatum("value", value, ""), PerfDatum("time", round(time.perf_counter() - started, 6), "s"))
        shown = f"{value:g}"
        for status, rng in ((Status.CRITICAL, self._critical), (Status.WARNING, self._warning)):
            if rng is not None and rng.alerts(value):
                return CheckResult(status, f"{shown} (outside {rng.text}) in {took}", perf)
        return CheckResult(Status.OK, f"{shown} in {took}", perf)


def _pick(data: dict[str, object], label: str, wanted: str) -> float | str:
    """From a batched answer (a vector), the value of the series whose `label` is `wanted`."""
    result = data.get("result")
    if data.get("resultType") != "vector" or not isinstance(result, list):
        return f"a batched query must give an instant vector, not a {data.get('resultType')}"
    found = [s for s in result if isinstance(s, dict) and s.get("metric", {}).get(label) == wanted]
    if not found:
        return f"no data: no series with {label}={wanted!r} in the batched answer ({len(result)} series)"
    if len(found) > 1:
        return f"{len(found)} series with {label}={wanted!r}; aggregate the query by {label}"
    return _value({"resultType": "vector", "result": found})


def _value(data: dict[str, object]) -> float | str:
    """The query's one value, or why there is none."""
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list):
        raw = result[1]
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return "no data: the query matched no series for this machine"
        if len(result) > 1:
            return f"the query gives {len(result)} series; it must give one per machine (filter by {{id}} or aggregate)"
        raw = result[0].get("value", [None, None])[1] if isinstance(result[0], dict) else None
    else:
        return f"the query gives a {kind}; it must give one value (an instant vector of one series, or a scalar)"
    try:
        value = float(str(raw))
    except ValueError:
        return f"the query's value {raw!r} is not a number"
    if math.isnan(value):
        return "the query's value is NaN"
    return value
