"""Config loading: typed models, relative paths, and every mistake reported with its path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from healerd.config import ConfigError, Mode, load_config

GOOD = """\
daemon:
  listen: 127.0.0.1:19464
  state_dir: ./state
  mode: observe
providers:
  lab: {kind: static}
services:
  web:
    provider: lab
    min_healthy: 50%
    machines:
      - {id: web-1, address: "127.0.0.1:8001"}
      - {id: web-2, address: "127.0.0.1:8002"}
      - {id: web-3, address: "127.0.0.1:8003"}
    checks:
      - name: health
        kind: http
        url: "http://{address}/health"
        interval: 500ms
        timeout: 250ms
        fall: 4
        expect: {status: [200, 204], max_latency: 100ms}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "healerd.yaml"
    path.write_text(text)
    return path


def test_good_config_loads_with_typed_values(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.daemon.mode is Mode.OBSERVE
    assert cfg.daemon.state_dir == (tmp_path / "state").resolve()  # relative to the file's folder
    assert cfg.daemon.check_paths == [(tmp_path / "checks").resolve()]
    web = cfg.services["web"]
    assert web.desired == 3 and web.min_healthy == 2  # 50% of 3, rounded up
    check = web.checks[0]
    assert (check.interval, check.timeout, check.fall, check.rise) == (0.5, 0.25, 4, 2)
    assert check.options.expect.max_latency == pytest.approx(0.1)  # type: ignore[attr-defined]


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return [p.render(info.value.filename) for p in info.value.problems]


def test_three_mistakes_are_all_reported_with_path_and_line(tmp_path: Path) -> None:
    text = GOOD.replace("interval: 500ms", "interval: 5 sec").replace("fall: 4", "fal: 4")
    text = text.replace("http://{address}/health", "http://{adress}/health")
    problems = problems_of(tmp_path, text)
    assert len(problems) == 3, problems
    joined = "\n".join(problems)
    lines = text.splitlines()
    line_of = {key: i + 1 for i, line in enumerate(lines) for key in ("interval:", "fal:", "url:") if key in line}
    assert f":{line_of['interval:']}: services.web.checks[0].interval: expected a duration" in joined
    assert f":{line_of['fal:']}: services.web.checks[0].fal: unknown key 'fal' (did you mean 'fall'?)" in joined
    assert f":{line_of['url:']}: services.web.checks[0].url: unknown template field {{adress}}" in joined
    assert "did you mean 'address'" in joined


def test_errors_in_separate_sections_are_all_listed(tmp_path: Path) -> None:
    text = GOOD.replace("listen: 127.0.0.1:19464", "listen: nowhere").replace("provider: lab", "provider: lba")
    text = text.replace("kind: http", "kind: htp") + "servics: {}\n"
    joined = "\n".join(problems_of(tmp_path, text))
    assert "daemon.listen: expected host:port" in joined
    assert "services.web.provider: unknown provider 'lba' (did you mean 'lab'?)" in joined
    assert "unknown check kind 'htp' (did you mean 'http'?)" in joined
    assert "servics: unknown key 'servics' (did you mean 'services'?)" in joined


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("timeout: 250ms", "timeout: 2s"), "timeout (2s) is longer than interval"),
        (("min_healthy: 50%", "min_healthy: 5"), "min_healthy (5) is more than desired (3)"),
        (("min_healthy: 50%", "min_healthy: 150%"), "cannot exceed 100%"),
        (("id: web-2", "id: web-1"), "machine id 'web-1' appears twice"),
        (('"127.0.0.1:8002"', '"127.0.0.1"'), "expected host:port"),
        (("status: [200, 204]", "status: [200, 999]"), "between 100 and 599"),
        (("fall: 4", "fall: 0"), "greater than or equal to 1"),
        (("http://{address}/health", "http://{address}/{"), "literal brace"),
        (("http://{address}/health", "ftp://{address}/"), "must start with http://"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    joined = "\n".join(problems_of(tmp_path, GOOD.replace(*change)))
    assert expected in joined


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "daemon:\n  listen: [oops\nservices: {}\n")
    assert len(problems) == 1 and "invalid YAML" in problems[0]
    assert ":3:" in problems[0] or ":2:" in problems[0]


def test_service_checks_cannot_use_machine_fields(tmp_path: Path) -> None:
    text = GOOD + (
        "    service_checks:\n      - {name: lb, kind: http, url: 'http://{address}/'}\n"
        "      - {name: lb2, kind: http, url: 'http://127.0.0.1:9/{service}'}\n"
    )
    joined = "\n".join(problems_of(tmp_path, text))
    assert "service_checks[0].url: template field not available here {address}" in joined
    assert "service_checks[1]" not in joined


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.yaml")


def test_example_config_is_valid() -> None:
    cfg = load_config(Path(__file__).parent.parent / "config.example.yaml")
    assert cfg.services
