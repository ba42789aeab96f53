"""Configs that cannot work are refused before they run, each problem naming its key, the wrong value and the fix
in healerd's words (never pydantic's), and never quoting a password."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.helpers import run_cli
from test_config_table import BASE, MANAGED, problem_lines, swap

from healerd.config import ConfigError, load_config

SECRET = "s3cr"  # part of every password below: no message may show it

CLUSTER = (
    swap("  state_dir: ./state", "  state_dir: ./state\n  api_token_file: token")
    + "cluster:\n  store: postgresql://healerd@127.0.0.1:5432/healerd\n  node: hd-a\n"
)
TWO_SERVICES = BASE + "  db:\n    provider: lab\n    machines: [{id: db-1, address: '127.0.0.1:8101'}]\n"


#: an AWS fleet behind an ALB target group, valid as it is
AWS = """\
daemon:
  state_dir: ./state
providers:
  prod:
    kind: aws
    region: eu-west-1
images:
  web-lt:
    provider: prod
    versions:
      v1: {launch_template: {id: lt-0abc, version: "1"}}
    known_good: v1
services:
  web:
    provider: prod
    image: web-lt
    desired: 2
    discovery: {asg: web-asg}
    rotation:
      kind: elbv2
      target_group_arns: ["arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef"]
      healthy_timeout: 20s
"""


def notifier(option: str) -> str:
    return f"notifiers:\n  hook: {{kind: webhook, url: 'http://127.0.0.1:9/hook', {option}}}\n"


def store(dsn: str) -> str:
    return swap("store: postgresql://healerd@127.0.0.1:5432/healerd", f"store: {json.dumps(dsn)}", CLUSTER)


def case(name: str, text: str, path: str, hint: str, at: str, files: dict[str, str] | None = None) -> Any:
    """A config refused with a problem at `path` on the line holding `at`, saying `hint`; `files` are written
    beside it first."""
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if at in line]
    assert len(lines) == 1, f"{name}: {at!r} is on lines {lines}"
    return pytest.param(text, path, hint, lines[0], files or {}, id=name)


CASES = [
    # -- addresses the other nodes, or clients, could not use -----------------------------------------------
    case(
        "advertise-wildcard",
        CLUSTER + "  advertise: 0.0.0.0:9464\n",
        "cluster.advertise",
        "0.0.0.0:9464 is the wildcard address: the other nodes cannot reach this node there; set advertise to the "
        "address they reach it at, like 10.0.0.7:9464",
        "advertise:",
    ),
    case(
        "advertise-ipv6-wildcard",
        CLUSTER + "  advertise: '[::]:9464'\n",
        "cluster.advertise",
        "is the wildcard address",
        "advertise:",
    ),
    case(
        "advertise-without-port",
        CLUSTER + "  advertise: '10.0.0.7:'\n",
        "cluster.advertise",
        "got '10.0.0.7:': the port is missing; add it after ':'",
        "advertise:",
    ),
    case(
        "advertise-port-99999",
        CLUSTER + "  advertise: 10.0.0.7:99999\n",
        "cluster.advertise",
        "port '99999' is not a port from 1 to 65535; fix the port",
        "advertise:",
    ),
    case(
        "advertise-port-0",
        CLUSTER + "  advertise: 10.0.0.7:0\n",
        "cluster.advertise",
        "port '0' is not a port from 1 to 65535",
        "advertise:",
    ),
    case(
        "listen-without-port",
        swap("127.0.0.1:9464", "'127.0.0.1:'"),
        "daemon.listen",
        "the port is missing; add it after ':'",
        "listen:",
    ),
    case(
        "listen-port-99999",
        swap("127.0.0.1:9464", "127.0.0.1:99999"),
        "daemon.listen",
        "port '99999' is not a port from 1 to 65535; fix the port",
        "listen:",
    ),
    case(
        "listen-port-0",
        swap("127.0.0.1:9464", "127.0.0.1:0"),
        "daemon.listen",
        "port '0' is not a port from 1 to 65535",
        "listen:",
    ),
    # -- connection strings libpq cannot read, or would misread ----------------------------------------------
    case(
        "dsn-bad-percent-escape",
        store("postgresql://healerd:s3cr%zzet@127.0.0.1:5432/healerd"),
        "cluster.store",
        "libpq cannot read the connection string postgresql://healerd:***@127.0.0.1:5432/healerd: invalid "
        'percent-encoded token: "***"; percent-encode',
        "store:",
    ),
    case(
        "dsn-unknown-parameter",
        store("postgresql://healerd:s3cret@db.example/healerd?sslmod=require"),
        "cluster.store",
        'invalid URI query parameter: "sslmod"; use the parameter names libpq knows',
        "store:",
    ),
    case(
        "dsn-unterminated-quote",
        store("host=db.example password='s3cret dbname=healerd"),
        "cluster.store",
        "host=db.example password=***: unterminated quoted string",
        "store:",
    ),
    case(
        "dsn-port-99999",
        store("postgresql://healerd:s3cret@db.example:99999/healerd"),
        "cluster.store",
        "names port '99999', which is not a port from 1 to 65535; fix the port",
        "store:",
    ),
    case(
        "dsn-password-with-an-unencoded-at",
        store("postgresql://healerd:s3c@ret@db.example/healerd"),
        "cluster.store",
        "holds an '@' in its host: percent-encode the password's special characters (% as %25, @ as %40",
        "store:",
    ),
    case(
        "dsn-over-4096-characters",
        store("postgresql://healerd:s3cret@db.example/healerd?application_name=" + "x" * 4100),
        "cluster.store",
        "the connection string is 4,164 characters long, more than 4,096 (postgresql://healerd:***@db.example",
        "store:",
    ),
    case(
        "dsn-servers-without-read-write",
        store("postgresql://healerd:s3cret@db1:5432,db2:5432/healerd"),
        "cluster.store",
        "postgresql://healerd:***@db1:5432,db2:5432/healerd names 2 servers with no target_session_attrs: a node "
        "could connect to a read-only standby and fail on every write; add ?target_session_attrs=read-write",
        "store:",
    ),
    case(
        "dsn-not-postgresql",
        store("mysql://healerd:s3cret@db.example/healerd"),
        "cluster.store",
        "expected a PostgreSQL connection string, starting with postgresql://, not mysql://",
        "store:",
    ),
    case(
        "dsn-in-store-file",
        swap("  store: postgresql://healerd@127.0.0.1:5432/healerd", "  store_file: dsn.txt", CLUSTER),
        "cluster.store_file",
        "dsn.txt: libpq cannot read the connection string postgresql://healerd:***@db.example/healerd",
        "store_file:",
        files={"dsn.txt": "postgresql://healerd:s3cr%zzet@db.example/healerd\n"},
    ),
    # -- durations that mean nothing at 0 -------------------------------------------------------------------
    case(
        "check-timeout-0",
        swap("timeout: 1s", "timeout: 0s"),
        "services.web.checks[0].timeout",
        "timeout must be above 0 (got 0s); use a duration like 1s",
        "timeout:",
    ),
    case(
        "check-retry-interval-0",
        swap("rise: 2", "rise: 2\n        retry_interval: 0s"),
        "services.web.checks[0].retry_interval",
        "retry_interval must be at least 50ms (got 0s)",
        "retry_interval:",
    ),
    case(
        "check-unknown-alert-after-0",
        swap("rise: 2", "rise: 2\n        unknown_alert_after: 0s"),
        "services.web.checks[0].unknown_alert_after",
        "unknown_alert_after must be above 0 (got 0s); use a duration like 5m",
        "unknown_alert_after:",
    ),
    case(
        "rollout-bake-0",
        swap("    known_good: v1", "    known_good: v1\n    rollout: {bake: 0s}", MANAGED),
        "images.demo-web.rollout.bake",
        "bake must be above 0 (got 0s); use a duration like 5m",
        "bake:",
    ),
    case(
        "rollout-probation-0",
        swap("    known_good: v1", "    known_good: v1\n    rollout: {probation_timeout: 0s}", MANAGED),
        "images.demo-web.rollout.probation_timeout",
        "probation_timeout must be above 0",
        "probation_timeout:",
    ),
    case(
        "remediation-probation-0",
        BASE + "    remediation: {probation_timeout: 0s}\n",
        "services.web.remediation.probation_timeout",
        "probation_timeout must be above 0 (got 0s); use a duration like 10m",
        "probation_timeout:",
    ),
    case(
        "notifier-timeout-0",
        notifier("timeout: 0s") + BASE,
        "notifiers.hook.timeout",
        "timeout must be above 0 (got 0s); use a duration like 10s",
        "hook:",
    ),
    case(
        "notifier-max-backoff-0",
        notifier("max_backoff: 0ms") + BASE,
        "notifiers.hook.max_backoff",
        "max_backoff must be above 0 (got 0s); use a duration like 5m",
        "hook:",
    ),
    case(
        "notifier-rate-limit-negative",
        notifier("rate_limit: -1") + BASE,
        "notifiers.hook.rate_limit",
        "must be at least 0, got -1; use 0 or more",
        "hook:",
    ),
    case(
        "alertmanager-repost-interval-0",
        "notifiers:\n  am: {kind: alertmanager, url: 'http://127.0.0.1:9093', repost_interval: 0s}\n" + BASE,
        "notifiers.am.repost_interval",
        "repost_interval must be above 0 (got 0s); use a duration like 1m",
        "am:",
    ),
    case(
        "aws-launch-timeout-0",
        swap("region: eu-west-1", "region: eu-west-1\n    launch_timeout: 0s", AWS),
        "providers.prod.launch_timeout",
        "launch_timeout must be above 0 (got 0s); use a duration like 10m",
        "launch_timeout:",
    ),
    case(
        "aws-drain-timeout-0",
        swap("region: eu-west-1", "region: eu-west-1\n    drain_timeout: 0s", AWS),
        "providers.prod.drain_timeout",
        "drain_timeout must be above 0 (got 0s); use a duration like 5m",
        "drain_timeout:",
    ),
    case(
        "elbv2-drain-timeout-0",
        swap("healthy_timeout: 20s", "healthy_timeout: 20s\n      drain_timeout: 0s", AWS),
        "services.web.rotation.drain_timeout",
        "drain_timeout must be above 0 (got 0s); use a duration like 5m",
        "drain_timeout:",
    ),
    case(
        "elbv2-healthy-timeout-0",
        swap("healthy_timeout: 20s", "healthy_timeout: 0s", AWS),
        "services.web.rotation.healthy_timeout",
        "healthy_timeout must be above 0 (got 0s); use a duration like 5m",
        "healthy_timeout:",
    ),
    # -- a machine's address lands in check URLs and HAProxy's commands ------------------------------------
    *(
        case(
            f"address-{name}",
            swap('address: "127.0.0.1:8001"', f"address: {address}"),
            "services.web.machines[0].address",
            f"machine 'web-1' has the address {shown}: {why}",
            "web-1",
        )
        for name, address, shown, why in [
            ("with-a-space", "'127.0.0.1 :8001'", "'127.0.0.1 :8001'", "the host '127.0.0.1 ' is not an IP address"),
            (
                "with-a-semicolon",
                "'web;disable:8001'",
                "'web;disable:8001'",
                "the host 'web;disable' is not an IP address or a host name (spaces, ';'",
            ),
            (
                "with-a-newline",
                '"web\\nshow:8001"',
                "'web\\nshow:8001'",
                "the host 'web\\nshow' is not an IP address or a host name (spaces",
            ),
            (
                "with-a-control",
                '"web\\x01:8001"',
                "'web\\x01:8001'",
                "the host 'web\\x01' is not an IP address or a host name (spaces",
            ),
            ("without-a-port", "127.0.0.1", "'127.0.0.1'", "the port is missing; write host:port, like 10.0.0.5:8080"),
            ("with-an-empty-port", "'127.0.0.1:'", "'127.0.0.1:'", "the port is missing after ':'"),
            ("port-99999", "127.0.0.1:99999", "'127.0.0.1:99999'", "the port '99999' is not a port from 1 to 65535"),
            ("port-0", "127.0.0.1:0", "'127.0.0.1:0'", "the port '0' is not a port from 1 to 65535"),
            ("ipv6-bare", "'fd00::5:8001'", "'fd00::5:8001'", "an IPv6 address goes in brackets before its port"),
            (
                "ipv4-in-brackets",
                "'[10.0.0.5]:8001'",
                "'[10.0.0.5]:8001'",
                "'[10.0.0.5]' is not an IPv6 address in brackets",
            ),
        ]
    ),
    # -- alert inputs: the labels of Prometheus's alerts ----------------------------------------------------
    case(
        "alert-label-empty",
        BASE + "alert_inputs: {service_label: ''}\n",
        "alert_inputs.service_label",
        "service_label '' is no Prometheus label name (letters, digits and '_', not starting with a digit)",
        "alert_inputs:",
    ),
    case(
        "alert-label-with-a-space",
        BASE + "alert_inputs: {machine_label: 'my machine'}\n",
        "alert_inputs.machine_label",
        "machine_label 'my machine' is no Prometheus label name (letters, digits and '_', not starting with a "
        "digit); name the label your alerts carry, e.g. 'my_machine'",
        "alert_inputs:",
    ),
    case(
        "alert-labels-the-same",
        BASE + "alert_inputs: {service_label: instance, machine_label: instance}\n",
        "alert_inputs",
        "service_label and machine_label are both 'instance': one label cannot name both the service and the "
        "machine; set them to two labels",
        "alert_inputs:",
    ),
    # -- the rest -------------------------------------------------------------------------------------------
    case(
        "depends-on-twice",
        swap("    provider: lab\n    machines:\n", "    provider: lab\n    depends_on: [db, db]\n    machines:\n")
        + "  db:\n    provider: lab\n    machines: [{id: db-1, address: '127.0.0.1:8101'}]\n",
        "services.web.depends_on[1]",
        "'db' is listed twice in depends_on; remove one of them",
        "depends_on:",
    ),
    case(
        "state-dir-is-a-file",
        swap("./state", "./afile"),
        "daemon.state_dir",
        "afile is a file, not a folder; set state_dir to a folder (healerd creates it if missing)",
        "state_dir:",
        files={"afile": "not a folder\n"},
    ),
    case(
        "state-dir-inside-a-file",
        swap("./state", "./afile/state"),
        "daemon.state_dir",
        "afile is a file, so the folder",
        "state_dir:",
        files={"afile": "not a folder\n"},
    ),
]

#: run through `healerd validate` as a user would
CLI_SAMPLE = {"advertise-wildcard", "dsn-bad-percent-escape", "dsn-over-4096-characters", "depends-on-twice"}


def setup(tmp_path: Path, text: str, files: dict[str, str]) -> Path:
    (tmp_path / "token").write_text("t0ken\n")
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    config = tmp_path / "healerd.yaml"
    config.write_text(text)
    return config


@pytest.mark.parametrize(("text", "path", "hint", "line", "files"), CASES)
def test_a_config_that_cannot_work_is_refused_naming_key_value_and_fix(
    tmp_path: Path, text: str, path: str, hint: str, line: int, files: dict[str, str]
) -> None:
    config = setup(tmp_path, text, files)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    rendered = info.value.render()
    hits = problem_lines(rendered, path)
    assert any(h.startswith(f"{config}:{line}: {path}: ") and hint in h for h in hits), (
        f"expected line {line} and {hint!r}:\n{rendered}"
    )
    assert SECRET not in rendered


@pytest.mark.e2e  # runs `healerd validate`
@pytest.mark.parametrize(("text", "path", "hint", "line", "files"), [c for c in CASES if c.id in CLI_SAMPLE])
def test_validate_refuses_them_with_exit_2(
    tmp_path: Path, text: str, path: str, hint: str, line: int, files: dict[str, str]
) -> None:
    config = setup(tmp_path, text, files)
    result = run_cli("validate", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert f"{config}:{line}: {path}: " in result.stderr and hint in result.stderr, result.stderr
    assert SECRET not in result.stderr


def test_durations_that_mean_something_at_0_are_taken(tmp_path: Path) -> None:
    """A group_wait of 0 sends at once and a rate_limit of 0 does not limit: both are taken, as the AWS fleet."""
    config = setup(tmp_path, notifier("group_wait: 0s, rate_limit: 0") + BASE, {})
    assert load_config(config).notifiers["hook"].options.group_wait == 0.0
    config.write_text(AWS)
    assert load_config(config).services["web"].rotation_kind == "elbv2"


# ---------------------------------------------------------------------------------------------------------
# healerd's words: every wrong value in every key, and no refusal in pydantic's phrasing

#: a config using most of what a config can hold, valid as it is
FULL: dict[str, Any] = {
    "daemon": {
        "listen": "127.0.0.1:19464",
        "state_dir": "./state",
        "mode": "observe",
        "api_token_file": "token",
        "history": 30,
        "max_concurrent_checks": 100,
        "event_log_size": 1000,
        "allowed_hosts": ["healerd.example"],
        "log_level": "info",
        "log_format": "console",
        "check_paths": ["./checks"],
    },
    "cluster": {
        "store": "postgresql://healerd@127.0.0.1:5432/healerd",
        "node": "n1",
        "advertise": "127.0.0.1:19464",
        "lease_ttl": "6s",
        "confirm_from": 2,
        "pgbouncer": False,
    },
    "alert_inputs": {"service_label": "service", "machine_label": "machine", "fall": 1, "rise": 1},
    "providers": {"lab": {"kind": "static"}, "demo": {"kind": "local", "port_range": [20000, 20100]}},
    "images": {
        "app": {
            "provider": "demo",
            "versions": {"v1": {"command": ["python3", "-m", "healerd.demo", "--port", "{port}"], "env": {"A": "b"}}},
            "known_good": "v1",
            "rollout": {
                "canary": 1,
                "bake": "10s",
                "max_bake": "30s",
                "max_surge": 1,
                "max_unavailable": 0,
                "probation_timeout": "60s",
                "drain": "1s",
                "judge": {"max_error_rate": "1%", "max_latency_ratio": 1.5, "min_results": 5, "latency_floor": "5ms"},
            },
        }
    },
    "notifiers": {
        "hook": {
            "kind": "webhook",
            "url": "http://127.0.0.1:9/hook",
            "group_wait": "0s",
            "max_attempts": 3,
            "rate_limit": 1,
            "min_severity": "info",
            "events": ["incident.opened"],
            "headers": {"X-Team": "web"},
        },
        "am": {"kind": "alertmanager", "url": "http://127.0.0.1:9093"},
    },
    "services": {
        "web": {
            "provider": "lab",
            "min_healthy": 1,
            "notify": ["hook"],
            "depends_on": ["api"],
            "machines": [{"id": "web-1", "address": "127.0.0.1:8001"}, {"id": "web-2", "address": "127.0.0.1:8002"}],
            "rotation": {"kind": "file", "path": "./rotation.json"},
            "remediation": {
                "max_concurrent": 1,
                "max_unhealthy": "50%",
                "max_per_hour": 6,
                "storm_cooldown": "5m",
                "backoff": "1m",
                "max_retries": 3,
                "probation_timeout": "10m",
                "boot_timeout": "5m",
                "keep_for": "1d",
                "keep_warning": "1h",
            },
            "checks": [
                {
                    "name": "health",
                    "kind": "http",
                    "url": "http://{address}/health",
                    "interval": "5s",
                    "timeout": "1s",
                    "fall": 3,
                    "rise": 2,
                    "flap_low": 20,
                    "flap_high": 30,
                    "retry_interval": "1s",
                    "unknown_alert_after": "5m",
                    "timeout_status": "critical",
                    "method": "GET",
                    "headers": {"X-Probe": "healerd"},
                    "max_body": 1000,
                    "expect": {"status": [200], "max_latency": "1s", "body_contains": "ok"},
                },
                {"name": "port", "kind": "tcp", "address": "{address}", "max_read": 100},
                {"name": "cmd", "kind": "exec", "command": ["true"], "output_cap": 1024},
                {"name": "prom", "kind": "prometheus", "url": "http://127.0.0.1:9090", "query": "up"},
            ],
        },
        "api": {"provider": "demo", "image": "app", "desired": 1},
    },
}

#: what a hand can put where a value goes
WRONG: list[Any] = [None, [], {}, "abc", -1, 0, 10**12, True, "", "x" * 5000, 2.5, {"a": 1}, [1, "a"], "-5s", "1e400"]

#: pydantic's own phrasing, which names its types rather than the fix
PYDANTIC_WORDS = (
    "Input should",
    "Field required",
    "Value error,",
    "Assertion failed",
    "type=",
    "pydantic",
    "should be a valid",
    "should have at",
    "String should",
    "URL input",
    "<class",
    "after validation",
    "unable to parse",
)


def places(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key and list item of a config, parents before children."""
    if path:
        yield path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from places(value, (*path, key))


def with_values(config: dict[str, Any], paths: list[tuple[Any, ...]], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for path in paths:
        node: Any = out
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = copy.deepcopy(value)
    return out


def test_no_refusal_speaks_pydantic(tmp_path: Path) -> None:
    """Each wrong value goes into every place of one depth at once (no place of a depth holds another, so all of
    them are judged): a few hundred problems per config, every one in healerd's words."""
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "checks").mkdir()
    config = tmp_path / "healerd.yaml"
    config.write_text(yaml.safe_dump(FULL))
    load_config(config)  # valid as it is
    by_depth: dict[int, list[tuple[Any, ...]]] = {}
    for path in places(FULL):
        by_depth.setdefault(len(path), []).append(path)
    messages: set[str] = set()
    for value in WRONG:
        for paths in by_depth.values():
            config.write_text(yaml.safe_dump(with_values(FULL, paths, value)))
            try:  # every top-level section empty ({}) is a valid, empty config
                load_config(config)
            except ConfigError as exc:
                messages.update(p.render("") for p in exc.problems)
    assert len(messages) > 500, len(messages)  # the sweep reached the keys
    pydantic = sorted(m for m in messages if any(w in m for w in PYDANTIC_WORDS))
    assert pydantic == [], "\n".join(pydantic[:40])
    assert all(len(m) < 1000 for m in messages), max(messages, key=len)[:300]
    print(f"config sweep: {len(messages)} distinct refusals, {len(pydantic)} in pydantic's words")
