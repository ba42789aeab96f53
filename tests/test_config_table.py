"""Malformed configs, one per row: each is refused (or warned about) with its YAML path, its line and a fix,
by the loader that `validate`, `run` and a SIGHUP reload share, and never with a traceback."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import run_cli

from healerd.config import ConfigError, load_config

BASE = """\
daemon:
  listen: 127.0.0.1:9464
  state_dir: ./state
providers:
  lab: {kind: static}
services:
  web:
    provider: lab
    machines:
      - {id: web-1, address: "127.0.0.1:8001"}
      - {id: web-2, address: "127.0.0.1:8002"}
    checks:
      - name: health
        kind: http
        url: "http://{address}/health"
        interval: 5s
        timeout: 1s
        fall: 3
        rise: 2
"""

MANAGED = """\
providers:
  demo: {kind: local}
images:
  demo-web:
    provider: demo
    versions:
      v1: {command: [python3, -m, healerd.demo, --port, "{port}"]}
    known_good: v1
services:
  web:
    provider: demo
    image: demo-web
    desired: 2
"""

NOTIFIER = "notifiers:\n  audit: {kind: webhook, url: 'http://127.0.0.1:9/hook'}\n"


def swap(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def billion_laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    names = "abcdefghij"
    for i in range(1, levels):
        text += f"{names[i]}: &{names[i]} [{', '.join([f'*{names[i - 1]}'] * 9)}]\n"
    return text


def case(name: str, text: str, path: str, hint: str, at: str) -> Any:  # a pytest.param
    """A config refused with a problem at `path`, on the line that contains `at`, whose message says `hint`."""
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if at in line]
    assert len(lines) == 1, f"{name}: {at!r} is on lines {lines}"
    return pytest.param(text, path, hint, lines[0], id=name)


CASES = [
    # -- the audit's fourteen: passed validate, then failed or misbehaved at run time ---------------------
    case("interval-nan", swap("interval: 5s", "interval: .nan"), "services.web.checks[0].interval", "finite", ".nan"),
    case("interval-inf", swap("interval: 5s", "interval: .inf"), "services.web.checks[0].interval", "finite", ".inf"),
    case(
        "timeout-minus-inf", swap("timeout: 1s", "timeout: -.inf"), "services.web.checks[0].timeout", "finite", "-.inf"
    ),
    case(
        "duplicate-key",
        swap("rise: 2", "rise: 2\n        interval: 10s"),
        "services.web.checks[0].interval",
        "key 'interval' appears twice (lines 16 and 20); keep one of them",
        "interval: 10s",
    ),
    case(
        "duplicate-service",
        BASE + "  web: {provider: lab, machines: [{id: w-1, address: '127.0.0.1:9'}]}\n",
        "services.web",
        "key 'web' appears twice (lines 7 and 20)",
        "  web: {provider",
    ),
    case(
        "duplicate-key-beside-a-merge",
        swap(
            "        rise: 2\n", "        rise: 2\n      - {<<: *hc, name: ready, timeout: 2s, name: ready2}\n"
        ).replace("      - name: health", "      - &hc\n        name: health"),
        "services.web.checks[1].name",
        "key 'name' appears twice",
        "name: ready2",
    ),
    case(
        "service-key-is-a-number",
        BASE + "  123: {provider: lab, machines: [{id: w-1, address: '127.0.0.1:9'}]}\n",
        "services.123",
        "service names must be strings (123 is read as a number); quote it: '123'",
        "  123:",
    ),
    case(
        "service-key-is-a-boolean",
        BASE + "  true: {provider: lab, machines: [{id: w-1, address: '127.0.0.1:9'}]}\n",
        "services.true",
        "service names must be strings (true is read as a boolean); quote it: 'true'",
        "  true:",
    ),
    case(
        "provider-key-is-a-number",
        swap("  lab: {kind: static}", "  lab: {kind: static}\n  1: {kind: static}"),
        "providers.1",
        "provider names must be strings",
        "  1: {kind",
    ),
    case(
        "image-version-key-is-a-number",
        swap("    known_good: v1", "      2: {command: [python3]}\n    known_good: v1", MANAGED),
        "images.demo-web.versions.2",
        "version names must be strings (2 is read as a number); quote it: '2'",
        "2: {command",
    ),
    case(
        "desired-huge",
        swap("    provider: lab\n", "    provider: lab\n    desired: 1000000\n"),
        "services.web.desired",
        "must be at most 10000, got 1000000; use 10000 or less",
        "desired:",
    ),
    case(
        "service-name-with-dotdot",
        swap("  web:\n", "  ../etc:\n"),
        "services.../etc",
        "names are 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit, without '..'",
        "../etc:",
    ),
    case(
        "service-name-with-slash",
        swap("  web:\n", "  web/api:\n"),
        "services.web/api",
        "rename it, e.g. 'web-api'",
        "web/api:",
    ),
    case("alias-bomb", billion_laughs(), "(top level)", "billion laughs", "f: &f"),
    # -- numbers: bounds, booleans, NaN -------------------------------------------------------------------
    case(
        "interval-over-a-day",
        swap("interval: 5s", "interval: 2d"),
        "services.web.checks[0].interval",
        "interval 2d is more than a day; use 24h or less",
        "interval: 2d",
    ),
    case(
        "timeout-over-a-day",
        swap("timeout: 1s", "timeout: 25h"),
        "services.web.checks[0].timeout",
        "timeout 25h is more than a day",
        "timeout: 25h",
    ),
    case(
        "retry-interval-over-a-day",
        swap("rise: 2", "rise: 2\n        retry_interval: 90000"),
        "services.web.checks[0].retry_interval",
        "retry_interval 90000s is more than a day",
        "retry_interval",
    ),
    case(
        "storm-cooldown-over-a-year",
        BASE + "    remediation: {storm_cooldown: 400d}\n",
        "services.web.remediation.storm_cooldown",
        "storm_cooldown 400d is more than 365 days; use 365d or less",
        "storm_cooldown",
    ),
    case(
        "keep-for-over-a-year",
        BASE + "    remediation: {keep_for: 1000d}\n",
        "services.web.remediation.keep_for",
        "more than 365 days",
        "keep_for",
    ),
    case(
        "boot-timeout-over-a-day",
        BASE + "    remediation: {boot_timeout: 2d}\n",
        "services.web.remediation.boot_timeout",
        "boot_timeout 2d is more than a day",
        "boot_timeout",
    ),
    case(
        "unknown-alert-after-over-a-year",
        swap("rise: 2", "rise: 2\n        unknown_alert_after: 9999d"),
        "services.web.checks[0].unknown_alert_after",
        "more than 365 days",
        "unknown_alert_after",
    ),
    case(
        "negative-interval",
        swap("interval: 5s", "interval: -5"),
        "services.web.checks[0].interval",
        "cannot be negative",
        "interval: -5",
    ),
    case(
        "interval-too-short",
        swap("interval: 5s", "interval: 10ms"),
        "services.web.checks[0].interval",
        "at least 50ms",
        "interval: 10ms",
    ),
    case(
        "flap-low-nan",
        swap("rise: 2", "rise: 2\n        flap_low: .nan"),
        "services.web.checks[0].flap_low",
        "finite number",
        "flap_low",
    ),
    case(
        "flap-low-above-high",
        swap("rise: 2", "rise: 2\n        flap_low: 60"),
        "services.web.checks[0]",
        "flap_low must not exceed flap_high",
        "- name: health",
    ),
    case("fall-zero", swap("fall: 3", "fall: 0"), "services.web.checks[0].fall", "must be at least 1, got 0", "fall"),
    case("rise-1000", swap("rise: 2", "rise: 1000"), "services.web.checks[0].rise", "must be at most 100", "rise"),
    case(
        "fall-boolean",
        swap("fall: 3", "fall: true"),
        "services.web.checks[0].fall",
        "expected a number, got true (a boolean)",
        "fall",
    ),
    case(
        "desired-yes",
        swap("    provider: lab\n", "    provider: lab\n    desired: yes\n"),
        "services.web.desired",
        "expected a number, got true (a boolean)",
        "desired",
    ),
    case(
        "min-healthy-boolean",
        swap("    provider: lab\n", "    provider: lab\n    min_healthy: true\n"),
        "services.web.min_healthy",
        "a boolean",
        "min_healthy",
    ),
    case(
        "negative-desired",
        swap("    provider: lab\n", "    provider: lab\n    desired: -1\n"),
        "services.web.desired",
        "must be at least 0, got -1",
        "desired",
    ),
    case(
        "negative-max-per-hour",
        BASE + "    remediation: {max_per_hour: -1}\n",
        "services.web.remediation.max_per_hour",
        "must be at least 0, got -1",
        "max_per_hour",
    ),
    case(
        "percentage-150",
        swap("    provider: lab\n", "    provider: lab\n    min_healthy: 150%\n"),
        "services.web.min_healthy",
        "cannot exceed 100%",
        "min_healthy",
    ),
    case(
        "min-healthy-over-desired",
        swap("    provider: lab\n", "    provider: lab\n    min_healthy: 5\n"),
        "services.web.min_healthy",
        "min_healthy (5) is more than desired (2)",
        "min_healthy",
    ),
    case(
        "history-too-short",
        swap("  state_dir: ./state", "  state_dir: ./state\n  history: 5"),
        "daemon.history",
        "must be at least 21, got 5; use 21 or more",
        "history",
    ),
    case(
        "max-concurrent-checks-huge",
        swap("  state_dir: ./state", "  state_dir: ./state\n  max_concurrent_checks: 1000000000"),
        "daemon.max_concurrent_checks",
        "must be at most 100000",
        "max_concurrent_checks",
    ),
    case(
        "plugin-number-boolean",
        swap("rise: 2", "rise: 2\n        max_body: false"),
        "services.web.checks[0].max_body",
        "expected a number, got false (a boolean)",
        "max_body",
    ),
    case(
        "notifier-rate-limit-inf",
        NOTIFIER.replace("}", ", rate_limit: .inf}") + BASE,
        "notifiers.audit.rate_limit",
        "expected a finite number",
        "audit:",
    ),
    case(
        "notifier-attempts-boolean",
        NOTIFIER.replace("}", ", max_attempts: true}") + BASE,
        "notifiers.audit.max_attempts",
        "a boolean",
        "audit:",
    ),
    case(
        "timeout-longer-than-interval",
        swap("timeout: 1s", "timeout: 10s"),
        "services.web.checks[0]",
        "timeout (10s) is longer than interval (5s)",
        "- name: health",
    ),
    # -- names --------------------------------------------------------------------------------------------
    case(
        "machine-id-with-slash",
        swap("id: web-1", "id: web/1"),
        "services.web.machines[0].id",
        "machine name 'web/1' cannot be used",
        "web/1",
    ),
    case(
        "check-name-with-dotdot",
        swap("name: health", "name: ../health"),
        "services.web.checks[0].name",
        "check name '../health' cannot be used",
        "../health",
    ),
    case(
        "provider-name-leading-dot",
        swap("  lab: {kind: static}", "  .lab: {kind: static}"),
        "providers..lab",
        "provider name '.lab' cannot be used",
        ".lab:",
    ),
    case(
        "notifier-name-with-slash",
        NOTIFIER.replace("audit:", "a/b:") + BASE,
        "notifiers.a/b",
        "notifier name 'a/b' cannot be used",
        "a/b:",
    ),
    case(
        "version-name-with-dotdot",
        swap("      v1: {", "      v1/../x: {", MANAGED),
        "images.demo-web.versions.v1/../x",
        "version name 'v1/../x' cannot be used",
        "v1/../x",
    ),
    case(
        "check-name-a-number",
        swap("name: health", "name: 123"),
        "services.web.checks[0].name",
        "put it in quotes",
        "name: 123",
    ),
    case(
        "duplicate-check-names",
        swap("        rise: 2\n", "        rise: 2\n      - {name: health, kind: tcp}\n"),
        "services.web.checks[1].name",
        "check name 'health' appears twice",
        "kind: tcp",
    ),
    case(
        "duplicate-machine-ids",
        swap("id: web-2", "id: web-1"),
        "services.web.machines[1].id",
        "machine id 'web-1' appears twice",
        "8002",
    ),
    # -- the daemon section -------------------------------------------------------------------------------
    case(
        "listen-everywhere-without-token",
        swap("127.0.0.1:9464", "0.0.0.0:9464"),
        "daemon.listen",
        "listening on 0.0.0.0:9464 without credentials lets anyone on the network control the fleet; set "
        "daemon.access_file (healerd access add NAME --scope admin) or daemon.api_token_file, or listen on "
        "127.0.0.1",
        "listen",
    ),
    case(
        "listen-ipv6-any-without-token",
        swap("127.0.0.1:9464", "'[::]:9464'"),
        "daemon.listen",
        "without credentials",
        "listen",
    ),
    case(
        "listen-not-a-host",
        swap("127.0.0.1:9464", "'my host:9464'"),
        "daemon.listen",
        "is not an IP address or a host name",
        "listen",
    ),
    case(
        "listen-port-out-of-range",
        swap("127.0.0.1:9464", "127.0.0.1:70000"),
        "daemon.listen",
        "expected host:port like 127.0.0.1:9464",
        "listen",
    ),
    case(
        "tls-cert-without-key",
        swap("  state_dir: ./state", "  state_dir: ./state\n  tls_cert_file: cert.pem"),
        "daemon.tls_cert_file",
        "tls_cert_file is set but tls_key_file is not; set both",
        "tls_cert_file",
    ),
    case(
        "tls-files-missing",
        swap("  state_dir: ./state", "  state_dir: ./state\n  tls_cert_file: nope.pem\n  tls_key_file: nope.key"),
        "daemon.tls_key_file",
        "cannot read",
        "tls_key_file",
    ),
    case(
        "token-file-missing",
        swap("  state_dir: ./state", "  state_dir: ./state\n  api_token_file: ./no-token"),
        "daemon.api_token_file",
        "cannot read",
        "api_token_file",
    ),
    case(
        "allowed-host-is-a-url",
        swap("  state_dir: ./state", "  state_dir: ./state\n  allowed_hosts: [http://x/]"),
        "daemon.allowed_hosts[0]",
        "is not a Host header value",
        "allowed_hosts",
    ),
    # -- wrong types, wrong keys --------------------------------------------------------------------------
    case("top-level-list", "- daemon\n- services\n", "(top level)", "the config must be a mapping", "- daemon"),
    case(
        "checks-is-a-mapping",
        swap("    checks:\n      - name: health", "    checks:\n      health:\n        name: health").replace(
            "        kind: http", "        kind: http", 1
        ),
        "services.web.checks",
        "expected a list, got a mapping",
        "    checks:",
    ),
    case(
        "machine-is-a-string",
        swap('- {id: web-1, address: "127.0.0.1:8001"}', "- web-1"),
        "services.web.machines[0]",
        "expected a mapping (key: value), got the text 'web-1'",
        "- web-1",
    ),
    case("service-is-null", BASE + "  api:\n", "services.api", "expected a mapping", "  api:"),
    case(
        "machine-port-zero",
        swap("127.0.0.1:8001", "127.0.0.1:0"),
        "services.web.machines[0].address",
        "the port '0' is not a port from 1 to 65535",
        ":0",
    ),
    case("unknown-top-level-key", BASE + "servics: {}\n", "servics", "did you mean 'services'", "servics"),
    case(
        "unknown-service-key",
        swap("    provider: lab\n", "    provider: lab\n    desird: 2\n"),
        "services.web.desird",
        "did you mean 'desired'",
        "desird",
    ),
    case(
        "unknown-check-kind",
        swap("kind: http", "kind: htpp"),
        "services.web.checks[0].kind",
        "did you mean 'http'",
        "htpp",
    ),
    case(
        "bad-url-scheme",
        swap("http://{address}/health", "ftp://{address}/health"),
        "services.web.checks[0].url",
        "must start with http://",
        "ftp://",
    ),
    case(
        "unknown-provider",
        swap("    provider: lab\n", "    provider: lba\n"),
        "services.web.provider",
        "did you mean 'lab'",
        "lba",
    ),
    # -- YAML itself --------------------------------------------------------------------------------------
    case(
        "tab-indentation", swap("        fall: 3", "\tfall: 3"), "(top level)", "indent with spaces, not tabs", "\tfall"
    ),
    case(
        "unclosed-bracket",
        swap('- {id: web-1, address: "127.0.0.1:8001"}', '- {id: web-1, address: "x"'),
        "(top level)",
        "expected ',' or '}'",
        "id: web-2",
    ),
    case("two-documents", BASE + "---\nservices: {}\n", "(top level)", "expected a single document", "---"),
    case(
        "impossible-date",
        swap("interval: 5s", "interval: 2024-13-01"),
        "(top level)",
        "cannot read '2024-13-01': month must be in 1..12",
        "2024-13-01",
    ),
    case(
        "python-tag",
        swap("interval: 5s", "interval: !!python/object:os.system x"),
        "(top level)",
        "could not determine a constructor",
        "python/object",
    ),
    case(
        "recursive-alias",
        BASE + "  api: &loop\n    machines: [*loop]\n",
        "(top level)",
        "cannot contain itself",
        "[*loop]",
    ),
    case(
        "nested-too-deep",
        BASE + "  deep: " + "[" * 80 + "]" * 80 + "\n",
        "(top level)",
        "nested more than 64 levels deep",
        "deep:",
    ),
    case(
        "nul-character",
        swap("http://{address}/health", "http://{address}/\\0"),
        "services.web.checks[0].url",
        "NUL character",
        "url:",
    ),
    case(
        "control-character",
        swap("interval: 5s", "interval: 5s\x07"),
        "(top level)",
        "control character U+0007 is not allowed",
        "interval: 5s",
    ),
    case(
        "merge-key-twice",
        BASE + "  api: &svc\n    provider: lab\n    machines: [{id: a-1, address: '127.0.0.1:9'}]\n"
        "  ui: {<<: *svc, <<: *svc}\n",
        "services.ui.<<",
        "merge several with <<: [*a, *b]",
        "  ui:",
    ),
]

#: a sample run through `healerd validate` as a user would: exit 2, the same line, no traceback
CLI_SAMPLE = {
    "interval-nan",
    "duplicate-key",
    "service-key-is-a-number",
    "service-name-with-dotdot",
    "desired-huge",
    "alias-bomb",
    "listen-everywhere-without-token",
    "tab-indentation",
    "top-level-list",
    "impossible-date",
    "nul-character",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "healerd.yaml"
    path.write_text(text)
    return path


def problem_lines(rendered: str, path: str) -> list[str]:
    return [line.strip() for line in rendered.splitlines() if f": {path}: " in line]


@pytest.mark.parametrize(("text", "path", "hint", "line"), CASES)
def test_malformed_config_is_refused_with_path_line_and_fix(
    tmp_path: Path, text: str, path: str, hint: str, line: int
) -> None:
    config = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    hits = problem_lines(info.value.render(), path)
    assert hits, f"no problem at {path}:\n{info.value.render()}"
    assert any(h.startswith(f"{config}:{line}: {path}: ") and hint in h for h in hits), (
        f"expected line {line} and {hint!r}:\n{info.value.render()}"
    )


@pytest.mark.e2e  # runs `healerd validate`
@pytest.mark.parametrize(("text", "path", "hint", "line"), [c for c in CASES if c.id in CLI_SAMPLE])
def test_validate_refuses_it_with_exit_2_and_no_traceback(
    tmp_path: Path, text: str, path: str, hint: str, line: int
) -> None:
    config = write(tmp_path, text)
    started = time.monotonic()
    result = run_cli("validate", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", "nothing is OK about it"
    hits = problem_lines(result.stderr, path)
    assert any(h.startswith(f"{config}:{line}: {path}: ") and hint in h for h in hits), result.stderr
    assert time.monotonic() - started < 10


def test_the_table_is_big_enough_and_every_row_is_named() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert set(ids) >= CLI_SAMPLE


# ---------------------------------------------------------------------------------------------------------
# Warned, not refused


@pytest.mark.e2e  # runs `healerd validate`
def test_a_listen_host_that_does_not_resolve_is_a_warning_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    text = swap("127.0.0.1:9464", "healerd-test.invalid:9464\n  api_token_file: token")
    config = write(tmp_path, text)
    cfg = load_config(config)
    (warning,) = [w for w in cfg.warnings if "daemon.listen" in w]
    assert warning.startswith(f"{config}:2: daemon.listen: host 'healerd-test.invalid' does not resolve"), warning
    assert "fix the name or listen on an IP address" in warning
    result = run_cli("validate", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert f"warning: {warning}" in result.stderr


def test_a_name_that_does_not_resolve_still_needs_a_token(tmp_path: Path) -> None:
    text = swap("127.0.0.1:9464", "healerd-test.invalid:9464")
    with pytest.raises(ConfigError, match="without credentials lets anyone on the network"):
        load_config(write(tmp_path, text))


@pytest.mark.e2e  # runs `healerd validate`
@pytest.mark.parametrize(
    "text",
    ["", "# nothing here yet\n", "{}\n", "services: {}\n"],
    ids=["empty-file", "only-comments", "empty-mapping", "no-services"],
)
def test_an_empty_config_is_refused_by_validate_unless_allowed(tmp_path: Path, text: str) -> None:
    config = write(tmp_path, text)
    assert load_config(config).warnings  # `run` starts, and says it checks nothing
    result = run_cli("validate", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        f"{config}: the config is empty: 0 services, nothing would be checked; add services (docs/configuration.md) "
        "or pass --allow-empty"
    ) in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    allowed = run_cli("validate", "--allow-empty", "-c", str(config))
    assert allowed.returncode == 0, allowed.stderr
    assert "0 service(s)" in allowed.stdout
    assert "warning: 0 services: nothing will be checked" in allowed.stderr


# ---------------------------------------------------------------------------------------------------------
# Size: hostile documents stay small


def test_a_billion_laughs_is_refused_in_well_under_a_second_without_growing(tmp_path: Path) -> None:
    config = write(tmp_path, billion_laughs(9))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match="billion laughs"):
            load_config(config)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert took < 1.0, f"{took:.2f}s"
    assert peak < 20 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_merge_keys_expanding_exponentially_are_refused_too(tmp_path: Path) -> None:
    text = "a: &a {x: 1}\n" + "".join(
        f"{c}: &{c} {{<<: [{', '.join([f'*{p}'] * 9)}]}}\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="billion laughs"):
        load_config(write(tmp_path, text))
    assert time.perf_counter() - started < 1.0


def test_a_config_over_4_mib_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    config = write(tmp_path, BASE + "#" + "x" * int(5.2 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    (problem,) = info.value.problems
    assert problem.message.startswith("config is 5.2 MiB, more than 4 MiB"), problem.message


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "healerd.yaml"
    config.write_bytes(BASE.replace("./state", "./st\xe4te").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(config)
    (problem,) = info.value.problems
    assert problem.line == 3 and "not UTF-8 text (byte 0xe4); save it as UTF-8" in problem.message
