"""Logging set-up: structlog, console or JSON lines, context (service, machine, check) from contextvars."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from .events import Event, Severity

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(fmt: str = "console", level: str = "info", stream: Any = None) -> None:
    stream = stream or sys.stdout
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty() if hasattr(stream, "isatty") else False)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: same stream, same format (one JSON object a line in json).
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *processors],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a skipped tick shows as lag
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # each failed connection attempt of the PostgreSQL pool: the store says once that it fails, and when it is back
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    logging.getLogger("aiohttp.server").addFilter(_malformed_requests)


def _malformed_requests(record: logging.LogRecord) -> bool:
    """A malformed HTTP request (anyone who can connect can send one) is one warning line, not a traceback
    that fills the log."""
    from aiohttp.http_exceptions import HttpProcessingError

    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.msg, record.args = f"malformed HTTP request refused: {exc.message or type(exc).__name__}", ()
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
    return True


_event_log = structlog.get_logger("healerd.events")


def log_event(event: Event) -> None:
    """Each state change logged once, when it happens (bus subscriber)."""
    method = {
        Severity.INFO: _event_log.info,
        Severity.WARNING: _event_log.warning,
        Severity.CRITICAL: _event_log.error,
    }[event.severity if event.firing else Severity.INFO]
    context = {"machine": event.machine, "check": event.check, "incident": event.incident}
    method(
        event.summary,
        type=event.type.value,
        status=event.status,
        service=event.service,
        event_id=event.id,
        **{k: v for k, v in context.items() if v},
    )
