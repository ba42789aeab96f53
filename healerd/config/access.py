"""Who may reach the API, in the config: reads open or not, and a reverse proxy trusted to say who the user is
(single sign-on, e.g. oauth2-proxy). The credentials themselves live in `daemon.access_file` (healerd.access)."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..access import Scope


class TrustedProxy(BaseModel):
    """`daemon.trusted_proxy`: the user header is honoured only on connections from `from` (its addresses);
    each user named in `scopes` gets that scope, any other user `default` (none: refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    addresses: list[str] = Field(alias="from", min_length=1, max_length=100)
    user_header: str = "X-Forwarded-User"
    scopes: dict[str, Scope] = Field(default_factory=dict)
    default: Scope | None = None

    @field_validator("addresses", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for a in v:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise ValueError(f"trusted_proxy.from takes IP addresses (the proxy's), got {a!r}") from None
        return [ipaddress.ip_address(a).compressed for a in v]

    @field_validator("user_header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not v or not all(c.isascii() and (c.isalnum() or c == "-") for c in v):
            raise ValueError(f"user_header must be a header name like X-Forwarded-User, got {v!r}")
        return v
