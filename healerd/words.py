"""What is wrong with a config or a playbook, in healerd's words: pydantic's validation errors (each names the
wrong value and says how to fix it), bad `{field}` templates, and the close spelling a mistyped name was
probably meant to be (`did_you_mean`).

The config loader and the playbook loader both speak through it; it imports neither of them.
"""

from __future__ import annotations

import difflib
import math
import re
import string
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .targets import TEMPLATE_FIELDS

_FORMATTER = string.Formatter()

#: a place in a YAML document: keys and list indexes from its top
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Refusal:
    """One wrong value: where it is, what is wrong with it and the fix; `at` is where to point the reader (a
    missing key is shown on the line of the mapping that lacks it)."""

    loc: Loc
    message: str
    at: Loc


def refusals(exc: ValidationError, vocabulary: Collection[str] = (), prefix: Loc = ()) -> list[Refusal]:
    """Every error of `exc`, below `prefix`, in healerd's words; a union's alternatives are one refusal.
    `vocabulary` is the keys the model knows, for a did-you-mean on an unknown one."""
    out: list[Refusal] = []
    for err in _unions(exc.errors(include_url=False)):
        loc = (*prefix, *err["loc"])
        at = loc[:-1] if err["type"] == "missing" and err["loc"] else loc
        out.append(Refusal(loc, shorten(explain(err, vocabulary)), at))
    return out


#: how much of a wrong value a problem quotes (a list of 20,000 machines is not quoted whole)
GOT_MAX = 200


#: a quoted value longer than a message should quote
_LONG_QUOTE = re.compile(r"'([^'\n]{" + str(GOT_MAX) + r",})'")


def shorten(message: str) -> str:
    """A long message with every long quoted value cut (a name of 5,000 characters is not quoted whole, twice);
    one of ordinary length is left alone, its apostrophes too."""
    if len(message) <= 3 * GOT_MAX:
        return message
    return _LONG_QUOTE.sub(lambda m: f"'{m[1][: GOT_MAX - 5]}...'", message)


def got(value: object) -> str:
    """A wrong value as a message quotes it: its repr, cut at GOT_MAX characters."""
    text = repr(value)
    return text if len(text) <= GOT_MAX else text[: GOT_MAX - 4] + " ..."


def _what(value: object) -> str:
    """What YAML made of a value, for a message saying it is the wrong kind of thing."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return f"a mapping {got(value)}"
    if isinstance(value, list | tuple):
        return f"a list {got(value)}"
    if isinstance(value, str):
        return f"the text {got(value)}"
    return got(value)


_LIST_FIX = "write the items on lines starting with '- ', or as [a, b]"
_MAPPING_FIX = "write key: value lines indented below it, or {key: value}"


def _type_message(typ: str, err: ErrorDetails) -> str | None:
    """The message of an error about the kind of a value, or None when `typ` is no such error."""
    value = err.get("input")
    expected = _EXPECTED.get(typ)
    if expected is None:
        return None
    message = f"expected {expected}, got {_what(value)}"
    if typ == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
        return message + "; put it in quotes to make it text"
    if typ == "string_type" and isinstance(value, list | dict):
        return message + "; write a single value"
    return message + _TYPE_FIX.get(typ, "")


#: what a value should have been, by pydantic's error type
_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "decimal_type": "a number",
    "decimal_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "string_sub_type": "text",
    "bytes_type": "text",
    "path_type": "a path (text)",
    "url_type": "a URL like http://127.0.0.1:9090",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "iterable_type": "a list",
    "dict_type": "a mapping (key: value)",
    "mapping_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "dataclass_type": "a mapping (key: value)",
    "none_required": "nothing (remove the value)",
}
_TYPE_FIX = {
    "int_type": "; write a number like 3",
    "int_parsing": "; write digits only, like 3",
    "int_from_float": "; drop the fraction",
    "float_type": "; write a number like 1.5",
    "float_parsing": "; write a number like 1.5",
    "bool_type": "; write true or false",
    "bool_parsing": "; write true or false",
    "path_type": "; write a path like ./file, in quotes if it looks like a number",
    "list_type": "; " + _LIST_FIX,
    "tuple_type": "; " + _LIST_FIX,
    "set_type": "; " + _LIST_FIX,
    "frozen_set_type": "; " + _LIST_FIX,
    "iterable_type": "; " + _LIST_FIX,
    "dict_type": "; " + _MAPPING_FIX,
    "mapping_type": "; " + _MAPPING_FIX,
    "model_type": "; " + _MAPPING_FIX,
    "model_attributes_type": "; " + _MAPPING_FIX,
    "dataclass_type": "; " + _MAPPING_FIX,
}


def explain(err: ErrorDetails, vocabulary: Collection[str] = ()) -> str:
    """One pydantic error in healerd's words, naming the wrong value and the fix."""
    typ, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    last = err["loc"][-1] if err["loc"] else "?"
    if typ == "extra_forbidden":
        key = str(last)
        return f"unknown key {key!r}{did_you_mean(key, sorted(vocabulary))}; remove it or fix its spelling"
    if typ == "missing":
        if isinstance(last, int):
            return f"item {last + 1} is missing; write every value this list takes"
        return f"missing required key {str(last)!r}; add `{last}: ...` here"
    if typ in ("value_error", "assertion_error"):
        return err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if typ == "union":
        return str(err["msg"])
    if (message := _type_message(typ, err)) is not None:
        return message
    bound = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in ctx.items()}  # 1, not 1.0
    bounds = {
        "greater_than_equal": ("at least", "ge", f"use {bound.get('ge')} or more"),
        "greater_than": ("more than", "gt", "use a larger value"),
        "less_than_equal": ("at most", "le", f"use {bound.get('le')} or less"),
        "less_than": ("less than", "lt", "use a smaller value"),
    }
    if typ in bounds and isinstance(value, bool):  # pydantic took it for 1 or 0
        return f"expected a number, got {str(value).lower()} (a boolean); write a number"
    if typ in bounds:
        words, key, fix = bounds[typ]
        return f"must be {words} {bound.get(key)}, got {got(value)}; {fix}"
    if typ in ("literal_error", "enum"):
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(str(value), options) if isinstance(value, str) else ""
        return f"must be one of {ctx.get('expected')}, got {got(value)}{hint}"
    if typ == "string_too_short":
        if ctx.get("min_length") == 1:
            return "is empty; write a value"
        return f"is too short: at least {ctx.get('min_length')} characters, got {got(value)}"
    if typ == "string_too_long":
        length = len(value) if isinstance(value, str) else "?"
        return (
            f"is {length} characters long, more than the {ctx.get('max_length')} allowed (it starts "
            f"{got(str(value)[:40])}); shorten it"
        )
    if typ == "string_pattern_mismatch":
        return f"{got(value)} does not have the form this key takes (the pattern {ctx.get('pattern')}); fix the value"
    if typ == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s), got {ctx.get('actual_length')}; add the missing ones"
    if typ == "too_long":
        return f"lists {ctx.get('actual_length')} items, more than the {ctx.get('max_length')} allowed; remove some"
    if typ in ("finite_number", "int_parsing_size"):
        return f"expected a finite number of a usable size, got {got(value)}; write a number"
    if typ == "multiple_of":
        return f"must be a multiple of {ctx.get('multiple_of')}, got {got(value)}"
    if typ.startswith("url_"):
        why = f" ({ctx['error']})" if "error" in ctx else ""
        schemes = f" with {ctx['expected_schemes']}" if "expected_schemes" in ctx else ""
        return f"{got(value)} is not a URL{schemes}{why}; write one like http://127.0.0.1:9090"
    # anything else pydantic may say, in the same voice
    text = _SHOULD.sub("must be", err["msg"])
    return f"{text} (got {got(value)}); fix the value"


_SHOULD = re.compile(r"^(?:Input|Value|String|List|Tuple|Dictionary|Object|Data|URL input) should (?:be|have)")
#: how pydantic tags the alternatives of a union in an error's location: int, str, literal['a','b'], a model's name
_UNION_TAG = re.compile(r"^(?:int|str|float|bool|none|[a-z-]+\[.*\]|[A-Z]\w*)$")


def _unions(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """pydantic reports a value that fits no alternative of `int | str` once per alternative; say it once: one
    error of type `union` at the value's place, listing what it could have been."""
    groups: dict[Loc, list[ErrorDetails]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        if loc and isinstance(loc[-1], str) and _UNION_TAG.match(loc[-1]):
            groups.setdefault(loc[:-1], []).append(err)
    merged: dict[Loc, ErrorDetails] = {}
    for loc, members in groups.items():
        if len(members) < 2 or any(m.get("input") is not members[0].get("input") for m in members):
            continue
        wanted = [_EXPECTED.get(m["type"]) or explain(m) for m in members]
        merged[loc] = {
            "type": "union",
            "loc": loc,
            "msg": f"expected {' or '.join(dict.fromkeys(wanted))}, got {_what(members[0].get('input'))}",
            "input": members[0].get("input"),
        }
    out: list[ErrorDetails] = []
    for err in errors:
        loc = tuple(err["loc"])
        if loc[:-1] in merged and loc and isinstance(loc[-1], str) and _UNION_TAG.match(loc[-1]):
            if (m := merged.pop(loc[:-1], None)) is not None:
                out.append(m)
        else:
            out.append(err)
    return out


def misread_numbers(value: object, raw: object, path: Loc) -> Iterator[tuple[Loc, str]]:
    """Numbers a model accepted that cannot be meant: true/false where a number goes (pydantic, like Python,
    takes True for 1) and .nan/.inf (which every bound check lets through). Any model, plugins' too."""
    if isinstance(value, BaseModel):
        # declared fields only: the extra ones (a check's kind fields) are validated by a model of their own
        if isinstance(raw, dict):
            for name in type(value).model_fields:
                if name in raw:
                    yield from misread_numbers(getattr(value, name), raw[name], (*path, name))
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float):
        if isinstance(raw, bool):
            yield path, f"expected a number, got {str(raw).lower()} (a boolean); write a number"
        elif not math.isfinite(value):
            yield path, f"expected a finite number, got {raw!r}; write a number"
    elif isinstance(value, list | tuple) and isinstance(raw, list):
        for i, (item, raw_item) in enumerate(zip(value, raw, strict=False)):
            yield from misread_numbers(item, raw_item, (*path, i))
    elif isinstance(value, dict) and isinstance(raw, dict):
        for key, item in value.items():
            if key in raw:
                yield from misread_numbers(item, raw[key], (*path, key))


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def template_problems(value: str, allowed: tuple[str, ...] = TEMPLATE_FIELDS) -> list[str]:
    """Problems with the `{field}` references in one string (empty when it is a valid template)."""
    try:
        parts = list(_FORMATTER.parse(value))
    except ValueError as exc:
        return [f"bad template {value!r}: {exc}; write a literal brace as {{{{ or }}}}"]
    problems = []
    for _literal, name, spec, conv in parts:
        if name is None:
            continue
        if name not in allowed:
            hint = did_you_mean(name, allowed)
            what = "unknown template field" if name not in TEMPLATE_FIELDS else "template field not available here"
            problems.append(
                f"{what} {{{name}}} in {value!r}{hint}; "
                f"known fields: {', '.join('{' + f + '}' for f in allowed)} "
                "(write a literal brace as {{ or }})"
            )
        elif spec or conv:
            problems.append(f"template field {{{name}}} takes no format spec or conversion in {value!r}")
    return problems


def find_template_problems(
    value: Any, allowed: tuple[str, ...] = TEMPLATE_FIELDS
) -> list[tuple[tuple[str | int, ...], str]]:
    """Walk raw config data; every bad template with its relative path."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(value, str):
        out.extend(((), p) for p in template_problems(value, allowed))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(((i, *path), p) for path, p in find_template_problems(v, allowed))
    elif isinstance(value, dict):
        for k, v in value.items():
            out.extend(((str(k), *path), p) for path, p in find_template_problems(v, allowed))
    return out
