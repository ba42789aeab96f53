"""The notifier interface: turn a group of events into one message, and deliver it over HTTP."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .._neterrors import describe
from ..durations import parse_duration, require_above_zero
from ..events import EventType, Severity

SEVERITY_ORDER = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class NotifierOptions(BaseModel):
    """Options every notifier has: routing filters, grouping, pacing and retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_severity: Severity = Severity.INFO
    events: list[EventType] | None = None  # only these types (default: all)
    send_resolved: bool = True
    group_wait: float = 3.0
    rate_limit: float = Field(default=0.0, ge=0)  # messages per second, 0 = unlimited
    timeout: float = 10.0
    max_attempts: int = Field(default=3, ge=1)  # for permanent (4xx) errors before the dead letter
    max_backoff: float = 300.0
    #: remind on-call of an incident still open and not acknowledged this often (None: never)
    renotify_interval: float | None = None

    @field_validator("renotify_interval", mode="before")
    @classmethod
    def _renotify(cls, v: object) -> float | None:
        if v is None:
            return None
        # 0 would remind on every pass of the outbox
        return require_above_zero(parse_duration(v, what="renotify_interval"), what="renotify_interval", example="4h")

    @field_validator("group_wait", "timeout", "max_backoff", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> float:
        return parse_duration(v, what=info.field_name or "duration")

    @field_validator("timeout", "max_backoff")
    @classmethod
    def _above_zero(cls, v: float, info: ValidationInfo) -> float:
        # no time for an answer, or retries with no pause between them; 0 of group_wait sends at once
        return require_above_zero(v, what=info.field_name or "duration", example=_EXAMPLES[info.field_name or ""])


#: a good value of each duration refused at 0, for its message
_EXAMPLES = {"timeout": "10s", "max_backoff": "5m"}


SECRET_MAX = 16384


def read_secret(file: Path | None, env: str | None, what: str) -> str | None:
    """A secret from a file or an environment variable; never from the config itself."""
    if file is not None:
        try:
            with Path(file).open("rb") as f:
                raw = f.read(SECRET_MAX + 1)  # bounded: a wrong path (/dev/zero) must not eat the memory
        except OSError as exc:
            raise ValueError(f"cannot read {what} file {file}: {exc.strerror or exc}") from None
        if len(raw) > SECRET_MAX:
            raise ValueError(f"{what} file {file} is larger than {SECRET_MAX} bytes; is it the right file?")
        value = raw.decode("utf-8", "replace").strip()
        if not value:
            raise ValueError(f"{what} file {file} is empty")
        return value
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ValueError(f"environment variable {env} (for {what}) is not set")
        return value
    return None


@dataclass(frozen=True)
class Delivery:
    """The receiver's answer to one attempt."""

    status: int | None  # None: no HTTP answer (network error, timeout)
    body: str = ""
    retry_after: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def redacted(self, secrets: list[str]) -> Delivery:
        """The same answer with every secret value masked (errors often quote the URL they failed on)."""
        return replace(self, body=redact(self.body, secrets), error=redact(self.error, secrets) if self.error else None)

    @property
    def permanent(self) -> bool:
        """A 4xx other than 408/429: retrying the same message will not help."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 425, 429)


REDACTED = "<redacted>"


def secret_parts(value: str) -> list[str]:
    """What of a secret can show up in a message: the whole, and for a URL its path and query (a Slack
    webhook's token is its path; a library may print the URL without its scheme, or only the path)."""
    parts = [value]
    url = urlsplit(value)
    if url.scheme and url.netloc:
        tail = url.path + (f"?{url.query}" if url.query else "")
        if len(tail) >= 8:
            parts += [url.netloc + tail, tail]
        if url.password:
            parts.append(url.password)
    return parts


def redact(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            import time

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class Notifier:
    kind: ClassVar[str] = ""
    Config: ClassVar[type[NotifierOptions]] = NotifierOptions

    def __init__(self, name: str, options: NotifierOptions, *, base_url: str = "") -> None:
        self.name = name
        self.options = options
        self.base_url = base_url  # healerd's own API, for links

    def build(self, events: list[dict[str, Any]], message_id: str) -> dict[str, Any]:
        """The message body for a group of events (JSON-serialisable)."""
        raise NotImplementedError

    async def send(self, session: aiohttp.ClientSession, body: dict[str, Any], message_id: str) -> Delivery:
        raise NotImplementedError

    def secrets(self) -> list[str]:
        """Secret values this notifier uses (read from their files), to be masked in whatever it reports."""
        return []

    async def deliver(self, session: aiohttp.ClientSession, body: dict[str, Any], message_id: str) -> Delivery:
        """`send`, with its answer free of secrets: what the log, the outbox and the API may show."""
        try:
            delivery = await self.send(session, body, message_id)
        except ValueError as exc:  # a secret file went missing or became unreadable: retried
            delivery = Delivery(None, error=str(exc))
        try:
            secrets = self.secrets()
        except ValueError:
            secrets = []
        return delivery.redacted([p for s in secrets for p in secret_parts(s)])

    def wants(self, event: dict[str, Any]) -> bool:
        opts = self.options
        if opts.events is not None and event["type"] not in {e.value for e in opts.events}:
            return False
        if event["status"] == "resolved":
            return opts.send_resolved
        return SEVERITY_ORDER[Severity(event["severity"])] >= SEVERITY_ORDER[opts.min_severity]

    async def post_json(
        self, session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict[str, str]
    ) -> Delivery:
        try:
            async with session.post(
                url,
                data=payload,
                headers={"Content-Type": "application/json", **headers},
                timeout=aiohttp.ClientTimeout(total=self.options.timeout),
            ) as resp:
                text = (await resp.content.read(4096)).decode("utf-8", "replace")
                return Delivery(resp.status, text, parse_retry_after(resp.headers.get("Retry-After")))
        except TimeoutError:
            return Delivery(None, error=f"no answer within {self.options.timeout:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            # the host, never the path: a webhook's path is often its credential (Slack)
            return Delivery(None, error=f"{describe(exc)} ({urlsplit(url).netloc})")
