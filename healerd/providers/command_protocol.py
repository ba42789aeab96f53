"""The `command` provider's protocol (version 1), apart from any process: what a request carries, how a reply
is read, and the options that say which executable speaks it (docs/providers.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..durations import parse_duration, require_above_zero
from ..machines import Lifecycle, Machine, address_problem
from .base import ALL_VERBS, ProviderOptions

PROTOCOL = 1
#: the exit status that says "this verb is not supported"
EXIT_UNSUPPORTED = 3
#: verbs that act on one machine: their request carries it
MACHINE_VERBS = frozenset(ALL_VERBS - {"list", "launch"})
#: attributes healerd records itself: an executable's reply cannot overwrite them
RESERVED = frozenset(
    (
        "launched_for",
        "launched_at",
        "image",
        "image_version",
        "incident",
        "quarantined_at",
        "evidence",
        "retiring",
        "retired_at",
        "retention_warned",
        "became",
        "rollout",
        "adopted",
    )
)
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ReplyError(ValueError):
    """A reply that is not what the protocol says; the message says what is missing or wrong."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments skipped; the value is taken as written). A bad line is named by
    its number only: the file holds secrets."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ValueError(f"cannot read env_file {path}: {exc.strerror or exc}") from None
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise ValueError(f"env_file {path} line {number} is not KEY=VALUE (a name of letters, digits and _)")
        out[key] = value
    return out


def executable_problem(name: str) -> str | None:
    """Why `name` (the command's first word) cannot be run, with the fix; None if it can."""
    if "/" not in name:
        if shutil.which(name) is None:
            return f"{name!r} is not on PATH; give the executable's full path"
        return None
    path = Path(name)
    if not path.is_absolute():
        return f"give the executable's full path (starting with /), not {name!r}"
    if not path.is_file():
        return f"{path} does not exist or is not a file"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable: chmod +x {path}"
    return None


class CommandOptions(ProviderOptions):
    #: the executable and its arguments; the verb is appended as the last argument
    command: list[str] = Field(min_length=1)
    timeout: float = 30.0
    launch_timeout: float = 600.0
    env_file: Path | None = None
    #: the verbs the executable claims (default: every verb of the protocol)
    verbs: list[str] | None = None
    #: the zones it launches machines in: healerd asks for one in each launch (`zone`), spreading them evenly
    zones: list[str] = Field(default_factory=list)

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        problem = executable_problem(v[0])
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("timeout", "launch_timeout", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> float:
        what = info.field_name or "timeout"
        example = "10m" if what == "launch_timeout" else "30s"
        return require_above_zero(parse_duration(v, what=what), what=what, example=example)

    @field_validator("env_file")
    @classmethod
    def _env_file(cls, v: Path | None) -> Path | None:
        if v is not None:
            if not v.is_absolute():
                raise ValueError(f"give the env_file's full path (starting with /), not {str(v)!r}")
            read_env_file(v)
        return v

    @field_validator("verbs")
    @classmethod
    def _verbs(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            unknown = [verb for verb in v if verb not in ALL_VERBS]
            if unknown:
                raise ValueError(f"unknown verb(s) {', '.join(unknown)}; the verbs are {', '.join(sorted(ALL_VERBS))}")
            if "list" not in v:
                raise ValueError("every executable answers list: add it to verbs")
        return v


class CommandImage(BaseModel):
    """An image version of the `command` provider: any mapping, handed to the executable as `spec`."""

    model_config = ConfigDict(extra="allow", frozen=True)


def request(verb: str, provider: str, service: str, deadline: float, **fields: Any) -> dict[str, Any]:
    return {
        "protocol": PROTOCOL,
        "verb": verb,
        "provider": provider,
        "service": service,
        "deadline": deadline,
        **fields,
    }


def machine_json(machine: Machine) -> dict[str, Any]:
    out: dict[str, Any] = {"id": machine.id, "address": machine.address, "attributes": machine.attributes}
    if machine.attributes.get("zone"):
        out["zone"] = machine.attributes["zone"]
    return out


def machine_from(raw: object, service: str, lifecycle: Lifecycle, where: str = "machine") -> Machine:
    """A machine of a reply: {"id", "address", "zone"?, "attributes"?}. Attribute values that are not strings
    are kept as their JSON; the attributes healerd records itself are not taken from a reply."""
    if not isinstance(raw, Mapping):
        raise ReplyError(f"{where} must be an object with id and address, got {_kind(raw)}")
    mid, address = raw.get("id"), raw.get("address")
    if not isinstance(mid, str) or not mid:
        raise ReplyError(f"{where}.id must be a non-empty string, got {_kind(mid)}")
    if not isinstance(address, str):
        raise ReplyError(f"{where}.address must be a string like 10.0.0.5:8080, got {_kind(address)}")
    problem = address_problem(address, port_required=False)
    if problem:
        raise ReplyError(f"{where}.address {address[:80]!r}: {problem}")
    attrs_raw = raw.get("attributes") or {}
    if not isinstance(attrs_raw, Mapping):
        raise ReplyError(f"{where}.attributes must be an object, got {_kind(attrs_raw)}")
    attrs = {str(k): v if isinstance(v, str) else _json(v) for k, v in attrs_raw.items() if k not in RESERVED}
    zone = raw.get("zone")
    if zone is not None:
        if not isinstance(zone, str):
            raise ReplyError(f"{where}.zone must be a string, got {_kind(zone)}")
        attrs["zone"] = zone
    return Machine(service, mid, address, lifecycle, attrs)


def field_of(reply: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    """`reply[key]`, which must be a `kind` (what the protocol calls `what`)."""
    value = reply.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ReplyError(f"the reply must carry {key!r}: {what}; got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)
