"""The URL type of config fields that healerd calls over HTTP (checks, webhooks, Alertmanager)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {value!r}")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
