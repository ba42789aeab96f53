"""`http` check: one request, status/latency/body expectations."""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

from pydantic import Field, field_validator
from yarl import URL

from .._neterrors import BodyCut, Disconnected, InvalidResponse, describe
from .._urls import HttpUrl
from ..durations import format_duration, parse_duration
from ..results import CheckResult, PerfDatum, Status
from ..targets import Target
from . import _jsonpath
from ._http1 import RETRYABLE, build_request, endpoint
from .base import Check, CheckEnv, CheckOptions


class HttpExpect(CheckOptions):
    status: list[int] = Field(default_factory=lambda: [200])
    max_latency: float | None = None
    body_contains: str | None = None
    body_regex: str | None = None
    #: JSON path -> the value it must have, e.g. {"$.status": "UP"} (see healerd.checks._jsonpath)
    json_: dict[str, Any] | None = Field(default=None, alias="json")

    @field_validator("json_")
    @classmethod
    def _json(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            if not v:
                raise ValueError('no condition: write paths and values, e.g. {"$.status": "UP"}')
            for path in v:
                _jsonpath.parse(path)
        return v

    @field_validator("max_latency", mode="before")
    @classmethod
    def _latency(cls, v: object) -> float | None:
        return None if v is None else parse_duration(v)

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {v!r}: {exc}") from None
        return v

    @field_validator("status")
    @classmethod
    def _statuses(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 100 <= s <= 599]
        if bad or not v:
            raise ValueError(f"expected HTTP status codes between 100 and 599, got {v}")
        return v


class HttpConfig(CheckOptions):
    url: HttpUrl
    method: Literal["GET", "HEAD", "POST", "PUT", "OPTIONS"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    expect: HttpExpect = Field(default_factory=HttpExpect)
    tls_verify: bool = True
    reuse_connections: bool = True
    max_body: int = 65536


class HttpCheck(Check[HttpConfig]):
    kind = "http"
    Config = HttpConfig
    timeout_status = Status.CRITICAL
    uses_socket = True

    def __init__(self, config: HttpConfig, target: Target, *, env: CheckEnv) -> None:
        super().__init__(config, target, env=env)
        # Everything a run needs is prepared once per (check, machine): the request's bytes, where it goes.
        url = URL(config.url)
        self._key, host_header = endpoint(url)
        self._request = build_request(
            config.method,
            url.raw_path_qs or "/",
            host_header,
            config.headers,
            config.body.encode() if config.body is not None else None,
            close=not config.reuse_connections,
        )
        expect = config.expect
        self._json = tuple((path, _jsonpath.parse(path), value) for path, value in (expect.json_ or {}).items())
        self._need_body = expect.body_contains is not None or expect.body_regex is not None or bool(self._json)
        self._keep = config.max_body if self._need_body else 0
        self._ssl = env.tls_context(config.tls_verify) if url.scheme == "https" else None

    async def run(self) -> CheckResult:
        cfg = self.config
        expect = cfg.expect
        started = time.perf_counter()
        try:
            response = await self.env.http_pool().request(
                self._key,
                self._request,
                head=cfg.method == "HEAD",
                keep=self._keep,
                reuse=cfg.reuse_connections,
                ssl_context=self._ssl,
                server_hostname=self._key[1],
                retry=cfg.method in RETRYABLE,
            )
        except (OSError, InvalidResponse, Disconnected, BodyCut) as exc:  # ssl.SSLError is an OSError
            return CheckResult.critical(f"{cfg.method} {cfg.url}: {describe(exc)}")
        elapsed = time.perf_counter() - started
        status = response.status
        body = response.body.decode("utf-8", "replace") if self._need_body else ""
        perf = (PerfDatum("time", round(elapsed, 6), "s"),)
        took = format_duration(elapsed)
        if status not in expect.status:
            return CheckResult.critical(f"HTTP {status} in {took} (expected {expect.status})", perf)
        if expect.body_contains is not None and expect.body_contains not in body:
            return CheckResult.critical(f"HTTP {status}: body lacks {expect.body_contains!r}", perf)
        if expect.body_regex is not None and not re.search(expect.body_regex, body):
            return CheckResult.critical(f"HTTP {status}: body does not match /{expect.body_regex}/", perf)
        if self._json and (problem := self._json_problem(response.body)):
            return CheckResult.critical(f"HTTP {status}: {problem}", perf)
        if expect.max_latency is not None and elapsed > expect.max_latency:
            return CheckResult.warning(
                f"HTTP {status} in {took}, slower than {format_duration(expect.max_latency)}", perf
            )
        return CheckResult.ok(f"HTTP {status} in {took}", perf)

    def _json_problem(self, body: bytes) -> str | None:
        """What the JSON body lacks of `expect.json`, or None when every condition holds."""
        try:
            document = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
            if len(body) >= self.config.max_body:
                return f"the JSON body is longer than max_body ({self.config.max_body} bytes): raise max_body"
            return f"the body is not JSON ({exc})"
        for text, path, expected in self._json:
            found, value = _jsonpath.find(document, path)
            if not found:
                return f"{text} is missing from the JSON body"
            if not _jsonpath.same(value, expected):
                return f"{text} is {_show(value)}, expected {_show(expected)}"
        return None


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
