"""The `http` check's body conditions: `expect.json` (a JSONPath subset) and `expect.body_regex`, against a real
aiohttp server whose health document changes as a service's would (a dependency going down, a slow drift)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from healerd.checks import CheckEnv, _jsonpath
from healerd.checks.http import HttpCheck, HttpConfig
from healerd.config import ConfigError, load_config
from healerd.results import Status
from healerd.runner import run_check
from healerd.targets import Target, render_model

StartApp = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def health_server(aiohttp_server_factory: StartApp) -> tuple[str, dict[str, Any]]:
    """A Spring-Boot-like /actuator/health whose document the test edits; /raw serves `state['raw']` as is."""
    state: dict[str, Any] = {
        "doc": {"status": "UP", "components": {"db": {"status": "UP"}, "disk space": {"free": 2048}},
                "checks": [{"name": "cache", "ok": True}], "version": 3},
        "raw": b"",
    }  # fmt: skip

    async def health(request: web.Request) -> web.Response:
        return web.json_response(state["doc"], status=200 if state["doc"].get("status") == "UP" else 503)

    async def raw(request: web.Request) -> web.Response:
        return web.Response(body=state["raw"], content_type="application/json")

    app = web.Application()
    app.router.add_get("/actuator/health", health)
    app.router.add_get("/raw", raw)
    return await aiohttp_server_factory(app), state


def check(env: CheckEnv, url: str, machine: str = "m1", **options: Any) -> HttpCheck:
    config = HttpConfig.model_validate({"url": url, **options})
    target = Target("web", machine, "127.0.0.1:1")
    return HttpCheck(render_model(config, target.fields()), target, env=env)


async def test_json_conditions_met_are_ok_and_each_unmet_one_is_critical_naming_path_value_and_expectation(
    env: CheckEnv, health_server: tuple[str, dict[str, Any]]
) -> None:
    base, state = health_server
    url = f"{base}/actuator/health"
    conditions = {
        "$.status": "UP",
        "$.components.db.status": "UP",
        "$.components['disk space'].free": 2048.0,  # 2048 in the body: numbers compare as numbers
        "$.checks[0].ok": True,
        "$.checks[-1].name": "cache",
    }
    ok = await run_check(check(env, url, expect={"json": conditions}), timeout=5)
    assert ok.status is Status.OK, ok.message

    # the database goes down: the service still answers 200 (only its overall status stays UP)
    state["doc"]["components"]["db"]["status"] = "DOWN"
    down = await run_check(check(env, url, expect={"json": conditions}), timeout=5)
    assert down.status is Status.CRITICAL
    assert down.message == 'HTTP 200: $.components.db.status is "DOWN", expected "UP"'

    # a member disappears (a new version renamed it)
    state["doc"]["components"] = {"database": {"status": "UP"}}
    gone = await run_check(check(env, url, expect={"json": {"$.components.db.status": "UP"}}), timeout=5)
    assert gone.status is Status.CRITICAL
    assert gone.message == "HTTP 200: $.components.db.status is missing from the JSON body"

    # numbers compare exactly, however large
    state["doc"]["version"] = 2**53 + 1
    big = await run_check(check(env, url, expect={"json": {"$.version": 2**53}}), timeout=5)
    assert big.status is Status.CRITICAL and big.message == f"HTTP 200: $.version is {2**53 + 1}, expected {2**53}"
    huge = await run_check(check(env, url, expect={"json": {"$.version": 10**400}}), timeout=5)
    assert huge.status is Status.CRITICAL, huge.message
    state["doc"]["version"] = 3

    # true is not 1, "3" is not 3
    typed = await run_check(check(env, url, expect={"json": {"$.version": "3"}}), timeout=5)
    assert typed.status is Status.CRITICAL and typed.message == 'HTTP 200: $.version is 3, expected "3"'
    state["doc"]["checks"][0]["ok"] = 1
    one = await run_check(check(env, url, expect={"json": {"$.checks[0].ok": True}}), timeout=5)
    assert one.status is Status.CRITICAL and one.message == "HTTP 200: $.checks[0].ok is 1, expected true"


async def test_json_expectation_can_name_the_machine(env: CheckEnv, aiohttp_server_factory: StartApp) -> None:
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"instance": "m2"})

    app = web.Application()
    app.router.add_get("/", whoami)
    base = await aiohttp_server_factory(app)
    mine = await run_check(check(env, base + "/", "m2", expect={"json": {"$.instance": "{id}"}}), timeout=5)
    other = await run_check(check(env, base + "/", "m1", expect={"json": {"$.instance": "{id}"}}), timeout=5)
    assert mine.status is Status.OK
    assert other.status is Status.CRITICAL and other.message == 'HTTP 200: $.instance is "m2", expected "m1"'


async def test_a_body_that_is_not_json_or_is_cut_at_max_body_is_critical_saying_which(
    env: CheckEnv, health_server: tuple[str, dict[str, Any]]
) -> None:
    base, state = health_server
    state["raw"] = b"<html>502 Bad Gateway</html>"
    html = await run_check(check(env, f"{base}/raw", expect={"json": {"$.status": "UP"}}), timeout=5)
    assert html.status is Status.CRITICAL and html.message.startswith("HTTP 200: the body is not JSON (")
    state["raw"] = json.dumps({"status": "UP", "pad": "x" * 5000}).encode()
    cut = await run_check(check(env, f"{base}/raw", max_body=1000, expect={"json": {"$.status": "UP"}}), timeout=5)
    assert cut.status is Status.CRITICAL
    assert cut.message == "HTTP 200: the JSON body is longer than max_body (1000 bytes): raise max_body"
    whole = await run_check(check(env, f"{base}/raw", max_body=10000, expect={"json": {"$.status": "UP"}}), timeout=5)
    assert whole.status is Status.OK
    state["raw"] = b"[" * 50000  # nested deeper than any parser follows
    deep = await run_check(check(env, f"{base}/raw", expect={"json": {"$.status": "UP"}}), timeout=5)
    assert deep.status is Status.CRITICAL and deep.message.startswith("HTTP 200: the body is not JSON ("), deep.message


async def test_status_is_judged_before_the_body_and_body_regex_with_json(
    env: CheckEnv, health_server: tuple[str, dict[str, Any]]
) -> None:
    base, state = health_server
    state["doc"]["status"] = "OUT_OF_SERVICE"
    result = await run_check(check(env, f"{base}/actuator/health", expect={"json": {"$.status": "UP"}}), timeout=5)
    assert result.status is Status.CRITICAL and result.message.startswith("HTTP 503 in ")
    state["doc"]["status"] = "UP"
    both = {"json": {"$.status": "UP"}, "body_regex": r'"version":\s*4'}
    result = await run_check(check(env, f"{base}/actuator/health", expect=both), timeout=5)
    assert result.status is Status.CRITICAL and result.message == 'HTTP 200: body does not match /"version":\\s*4/'


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("status", "must start with $"),
        ("$.checks[*].status", "wildcards, filters, slices and '..' are not supported"),
        ("$..status", "not supported"),
        ("$.items[1:3]", "not supported"),
        ("$.a b", "cannot read ' b'"),
        ("$[?(@.x)]", "not supported"),
        ("$.a[*]", "not supported"),
    ],
)
def test_validate_refuses_a_json_path_outside_the_subset_naming_it_and_the_fix(
    tmp_path: Path, path: str, words: str
) -> None:
    health = {"name": "health", "kind": "http", "url": "http://{address}/", "expect": {"json": {path: 1}}}
    (tmp_path / "c.yaml").write_text(
        json.dumps(
            {
                "daemon": {"state_dir": str(tmp_path / "state")},
                "providers": {"lab": {"kind": "static"}},
                "services": {
                    "web": {
                        "provider": "lab",
                        "machines": [{"id": "m1", "address": "127.0.0.1:8080"}],
                        "checks": [health],
                    }
                },
            }
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    text = str(info.value)
    assert "services.web.checks[0].expect.json" in text and words in text, text


names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=12,
)


def test_a_quoted_name_may_hold_what_would_be_unsupported_syntax_outside_quotes() -> None:
    path = _jsonpath.parse("$['a..b']['[*]']")
    assert _jsonpath.find({"a..b": {"[*]": 7}}, path) == (True, 7)


@given(documents, st.data())
def test_a_path_written_for_any_value_of_a_document_finds_exactly_that_value(doc: Any, data: st.DataObject) -> None:
    # walk down to a random value, writing its path as a user would (quoted names, negative indices)
    value, text = doc, "$"
    while isinstance(value, dict | list) and value and data.draw(st.booleans()):
        if isinstance(value, list):
            i = data.draw(st.integers(-len(value), len(value) - 1))
            value, text = value[i], f"{text}[{i}]"
        else:
            key = data.draw(st.sampled_from(sorted(value)))
            quoted = key.replace("\\", "\\\\").replace("'", "\\'")
            value, text = value[key], f"{text}['{quoted}']"
    found, got = _jsonpath.find(doc, _jsonpath.parse(text))
    assert found and _jsonpath.same(got, value)
