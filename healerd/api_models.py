"""The HTTP API's inputs as typed values: JSON bodies decoded within limits, one pydantic model per body and
query string, and path ids. Bad input becomes an `InputError` that names the field and says what to send."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, model_validator

from .durations import parse_duration
from .modes import Mode

#: The largest body the API reads, in bytes.
MAX_BODY = 64 * 1024
#: How deeply JSON arrays and objects may nest in a body (no body needs more than 2).
MAX_DEPTH = 32
#: Names and ids in paths, queries and bodies: what config and providers produce.
NAME_MAX = 200
SAFE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
NAME_RULE = f"1 to {NAME_MAX} letters, digits or _ . : -"

DAY = 86400.0


class InputError(ValueError):
    """A request the API refuses: `error` is a short title, `detail` names the field and the fix."""

    def __init__(self, error: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.status = status


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------
# JSON bodies

_JSON_SPECIAL = re.compile(r'[\\"\[\]{}]')


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before json.loads recurses into it (one linear pass)."""
    depth, in_string, escaped_at = 0, False, -1
    for m in _JSON_SPECIAL.finditer(text):
        ch, at = m.group(), m.start()
        if at == escaped_at:
            continue
        if ch == "\\":
            escaped_at = at + 1 if in_string else escaped_at
        elif ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise InputError("body too deep", f"JSON may nest at most {MAX_DEPTH} levels; send a flat object")
        else:
            depth -= 1


def _refuse_constant(name: str) -> Any:
    raise InputError("bad JSON", f"{name} is not a JSON number; send a finite number")


def _check_strings(value: object) -> None:
    """Refuse unpaired surrogates (\\ud800): valid JSON escapes, but no UTF-8 store or log can hold them."""
    stack = [value]
    while stack:  # bounded: every item of the decoded body is visited once
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise InputError("bad JSON", "a string holds an unpaired UTF-16 surrogate escape") from None


def decode_json(raw: bytes) -> object:
    """The value of a UTF-8 JSON body of at most MAX_BODY bytes; an empty body is `{}`."""
    if len(raw) > MAX_BODY:
        raise InputError("body too large", f"the body may be at most {MAX_BODY} bytes", status=413)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InputError("bad JSON", "the body must be UTF-8 encoded JSON") from None
    if not text.strip():
        return {}
    _check_depth(text)
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except InputError:
        raise
    except RecursionError:
        raise InputError("body too deep", f"JSON may nest at most {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise InputError("bad JSON", f"the body is not valid JSON: {exc}") from None
    except ValueError:  # an integer of thousands of digits
        raise InputError("bad JSON", "a number in the body is too long; send a plain number") from None
    _check_strings(value)
    return value


# ---------------------------------------------------------------------------------------------------------
# Field types


def _name(value: object) -> str:
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(f"expected a name of {NAME_RULE}, got {_shown(value)}")
    return value


def _duration(within: Callable[[float], bool], bounds: str) -> Callable[[object], float]:
    def check(value: object) -> float:
        try:
            seconds = parse_duration(value)
        except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
            raise ValueError(f"expected a duration like 90s, 30m or 2h ({bounds}), got {_shown(value)}") from None
        if not math.isfinite(seconds) or not within(seconds):
            raise ValueError(f"expected a duration {bounds}, got {_shown(value)}")
        return seconds

    return check


def _whole_number(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
            number = int(value)
        else:
            raise ValueError(f"expected a whole number from {low} to {high}, got {_shown(value)}")
        if not low <= number <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {number}")
        return number

    return check


def _types(value: object) -> tuple[str, ...]:
    """`?type=a,b` as ('a', 'b')."""
    if not isinstance(value, str):
        raise ValueError(f"expected event types separated by commas, got {_shown(value)}")
    parts = tuple(p for p in value.split(",") if p)
    if not 1 <= len(parts) <= 50 or not all(SAFE_NAME.fullmatch(p) for p in parts):
        raise ValueError(f"expected 1 to 50 event types of {NAME_RULE}, separated by commas")
    return parts


def _mode(value: object) -> Mode | None:
    if value is None or value == "config":
        return None
    if isinstance(value, str) and value in {m.value for m in Mode}:
        return Mode(value)
    choices = ", ".join(m.value for m in Mode)
    raise ValueError(f"expected one of {choices}, or config (or null) for the config's mode; got {_shown(value)}")


Name = Annotated[str, BeforeValidator(_name)]
Text200 = Annotated[str, Field(strict=True, max_length=200)]
Text1000 = Annotated[str, Field(strict=True, max_length=1000)]
SilenceDuration = Annotated[float, BeforeValidator(_duration(lambda s: 0 < s <= 30 * DAY, "above 0s, at most 30d"))]
ReleaseTimeout = Annotated[float, BeforeValidator(_duration(lambda s: 1 <= s <= 3600, "from 1s to 1h"))]
EventLimit = Annotated[int, BeforeValidator(_whole_number(1, 1000))]
NotificationLimit = Annotated[int, BeforeValidator(_whole_number(1, 500))]
ModeChoice = Annotated[Mode | None, BeforeValidator(_mode)]


# ---------------------------------------------------------------------------------------------------------
# Bodies


class Body(BaseModel):
    """A JSON request body: unknown keys are refused by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoBody(Body):
    """terminate, delete a silence: nothing to send (`{}` or an empty body)."""


class ModeChange(Body):
    mode: ModeChoice = None
    service: Name | None = None
    paused: StrictBool = False

    @model_validator(mode="after")
    def _something(self) -> ModeChange:
        if not self.changes_mode and not self.changes_paused:
            raise ValueError('nothing to change: send {"mode": "observe|dry-run|auto|config"} and/or {"paused": true}')
        if self.service is not None and not self.changes_mode:
            raise ValueError("service applies to mode only; pausing is daemon-wide (drop service)")
        return self

    @property
    def changes_mode(self) -> bool:
        return "mode" in self.model_fields_set

    @property
    def changes_paused(self) -> bool:
        return "paused" in self.model_fields_set


class SilenceCreate(Body):
    service: Name | None = None
    machine: Name | None = None
    duration: SilenceDuration = 3600.0
    comment: Text1000 = ""
    created_by: Text200 = ""
    #: silence a machine the daemon does not know (yet): one about to be launched
    force: StrictBool = False

    @model_validator(mode="after")
    def _target(self) -> SilenceCreate:
        if self.service is None and self.machine is None:
            raise ValueError('a silence needs a target: send {"service": "web"} and/or {"machine": "web-1"}')
        return self


class Release(Body):
    to_rotation: StrictBool = False
    timeout: ReleaseTimeout = 60.0


class Resolve(Body):
    """resolve an incident by hand, clear a storm cooldown: who asks (optional)."""

    by: Text200 = ""


class Acknowledge(Body):
    """POST /api/v1/incidents/{id}/ack: a human is on it (no more reminders); who, and what they say."""

    by: Text200 = ""
    comment: Text1000 = ""


BakeDuration = Annotated[float, BeforeValidator(_duration(lambda s: 0 < s <= DAY, "above 0s, at most 1d"))]
CanaryCount = Annotated[int, BeforeValidator(_whole_number(0, 1000))]


class RolloutStart(Body):
    """POST /api/v1/services/{name}/rollout: try `version` on `canary` machines for `bake`, then roll it over."""

    version: Name
    canary: CanaryCount | None = None
    bake: BakeDuration | None = None
    by: Text200 = ""


class RolloutChange(Body):
    """pause, resume, abort: who asks (optional)."""

    by: Text200 = ""


class Probe(Body):
    """POST /api/v1/cluster/probe: the leader asks this node to run a machine's checks now (or the checks of
    a zone's `machines`, whose loss it confirms)."""

    service: Text200
    machine: Text200 = ""
    machines: list[Text200] = Field(default_factory=list, max_length=10_000)

    @model_validator(mode="after")
    def _one(self) -> Probe:
        if bool(self.machine) == bool(self.machines):
            raise ValueError("give either machine (one id) or machines (a list of ids)")
        return self


# ---------------------------------------------------------------------------------------------------------
# Query strings (values arrive as strings)


class Query(BaseModel):
    """A query string: unknown parameters are refused by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoQuery(Query):
    pass


class EventsQuery(Query):
    limit: EventLimit = 100
    service: Name | None = None
    machine: Name | None = None
    type: Annotated[tuple[str, ...] | None, BeforeValidator(_types)] = None


class MachinesQuery(Query):
    service: Name | None = None
    condition: Name | None = None


HistorySpan = Annotated[float, BeforeValidator(_duration(lambda s: 0 < s <= 7 * DAY, "above 0s, at most 7d"))]


class HistoryQuery(Query):
    """GET /api/v1/history: one service, or one of its machines; `check` one check; `since` how far back."""

    service: Name
    machine: Name | None = None
    check: Text200 | None = None
    since: HistorySpan = 3600.0


class StatusQuery(Query):
    """GET /: `part=main` for the page's main part alone (what the page's refresh fetches)."""

    part: Literal["main"] | None = None


class IncidentsQuery(Query):
    state: Name | None = None


class NotificationsQuery(Query):
    limit: NotificationLimit = 50


# ---------------------------------------------------------------------------------------------------------
# Parsing

M = TypeVar("M", bound=BaseModel)


def _input_error(model: type[BaseModel], exc: ValidationError, where: str) -> InputError:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"])
    takes = ", ".join(model.model_fields)
    if first["type"] == "extra_forbidden":
        fields = f"it takes {takes}" if takes else "it takes none"
        kind = "body field" if where == "body" else "query parameter"
        return InputError(f"unknown {kind}", f"unknown {kind} {_shown(field, 60)}; {fields}")
    message = str(first["msg"]).removeprefix("Value error, ")
    if not field:  # a check of the whole body (model_validator)
        return InputError(f"bad {where}", message)
    return InputError(f"bad {field}", f"{field}: {message}")


def parse_body(model: type[M], value: object) -> M:
    if not isinstance(value, dict):
        raise InputError("bad body", f"the body must be a JSON object like {{}}, not {type(value).__name__}")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise _input_error(model, exc, "body") from None


def parse_query(model: type[M], items: Iterable[tuple[str, str]]) -> M:
    values: dict[str, str] = {}
    for key, value in items:
        if key in values:
            raise InputError(f"bad {_shown(key, 60)}", f"give query parameter {_shown(key, 60)} once")
        values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _input_error(model, exc, "query") from None


def path_value(key: str, value: str) -> str:
    """A `{key}` of a URL path: a name of safe characters (never `..`, `/` or a NUL)."""
    if not SAFE_NAME.fullmatch(value) or value in (".", ".."):
        raise InputError(f"bad {key}", f"{key} must be {NAME_RULE}; got {_shown(value)}")
    return value
