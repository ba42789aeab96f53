"""End to end: the `healerd` command line (check, validate, status) as a user runs it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, free_port

from .helpers import StartDaemon, http_check, make_config, run_cli, wait_until, write_config

pytestmark = pytest.mark.e2e


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    """A whitespace-aligned table: the header's words and each row split on runs of 2+ spaces."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0].split()
    return header, [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


# ---------------------------------------------------------------------------------------------------------
# healerd check


def test_check_prints_a_table_and_exits_with_the_worst_status(tmp_path: Path, fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(3)
    fleet[0].mode = "ok"
    fleet[1].mode, fleet[1].slow_seconds = "slow", 0.4
    fleet[2].mode = "fail"
    cfg = make_config(
        tmp_path,
        free_port(),
        [("fast", fleet[0].address), ("slow", fleet[1].address), ("broken", fleet[2].address)],
        [http_check(interval="5s", timeout="3s", expect={"status": [200], "max_latency": "150ms"})],
    )
    path = write_config(tmp_path / "healerd.yaml", cfg)

    result = run_cli("check", "-c", str(path))

    assert result.returncode == 2, f"worst status is CRITICAL (2)\n{result.stdout}\n{result.stderr}"
    header, rows = _table(result.stdout)
    assert header == ["SERVICE", "MACHINE", "CHECK", "STATUS", "TIME", "MESSAGE"], result.stdout
    by_machine = {row[1]: row for row in rows}
    assert set(by_machine) == {"fast", "slow", "broken"}, result.stdout
    assert all(row[0] == "web" and row[2] == "health" for row in rows), result.stdout
    assert by_machine["fast"][3] == "OK"
    assert by_machine["slow"][3] == "WARNING"
    assert by_machine["broken"][3] == "CRITICAL"
    assert "500" in by_machine["broken"][5], "the message should say what was wrong"
    assert "slower than" in by_machine["slow"][5]
    assert all(f.hits == 1 for f in fleet.machines), "each check runs once"


def test_check_exits_zero_when_all_ok(tmp_path: Path, fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(1)
    cfg = make_config(tmp_path, free_port(), [("web-1", fleet[0].address)], [http_check(interval="5s")])
    path = write_config(tmp_path / "healerd.yaml", cfg)
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


# ---------------------------------------------------------------------------------------------------------
# healerd validate


BAD_CONFIG = """\
daemon:
  listen: 127.0.0.1:{port}
  state_dir: ./state
providers:
  lab: {{kind: static}}
services:
  web:
    provider: lab
    machines:
      - {{id: web-1, address: "127.0.0.1:8080"}}
    checks:
      - name: health
        kind: http
        url: "http://{{adress}}/health"
        interval: "5 sec"
        fall: 3
      - name: port
        kind: tcp
        intervl: 2s
"""


def _line_of(text: str, needle: str) -> int:
    matches = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(matches) == 1, needle
    return matches[0]


def test_validate_lists_every_problem_with_path_and_line(tmp_path: Path) -> None:
    text = BAD_CONFIG.format(port=free_port())
    path = tmp_path / "bad.yaml"
    path.write_text(text)

    result = run_cli("validate", "-c", str(path))

    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err, err
    expected = {
        "services.web.checks[0].interval": (_line_of(text, "5 sec"), "5 sec"),
        "services.web.checks[1].intervl": (_line_of(text, "intervl"), "unknown key"),
        "services.web.checks[0].url": (_line_of(text, "{adress}"), "{adress}"),
    }
    for yaml_path, (line, detail) in expected.items():
        hits = [row for row in err.splitlines() if f": {yaml_path}:" in row]
        assert len(hits) == 1, f"{yaml_path} should be listed once:\n{err}"
        assert f"{path.name}:{line}: {yaml_path}:" in hits[0], f"expected {path.name}:{line} for {yaml_path}:\n{err}"
        assert detail in hits[0], hits[0]
    assert "did you mean 'interval'" in err
    assert "did you mean 'address'" in err
    assert "3 problems" in err, err
    assert ": OK" not in result.stdout


def test_validate_a_good_config_prints_a_summary(tmp_path: Path) -> None:
    fixed = BAD_CONFIG.replace("{{adress}}", "{{address}}").replace('"5 sec"', "5s").replace("intervl", "interval")
    path = tmp_path / "good.yaml"
    path.write_text(fixed.format(port=free_port()))

    result = run_cli("validate", "-c", str(path))

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"{path.name}: OK" in out, out
    assert "1 service(s)" in out and "1 machine(s)" in out and "2 check(s) per round" in out, out
    assert "service web" in out
    assert "health (http every 5s)" in out and "port (tcp every 2s)" in out, out
    assert out.rstrip().endswith("; out of rotation when down; a human repairs it"), out  # no playbook: said so
    assert result.stderr == ""


# ---------------------------------------------------------------------------------------------------------
# healerd status


def test_status_shows_services_and_machines_of_a_running_daemon(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    fleet: Fleet = fleet_factory(2)
    cfg = make_config(
        tmp_path,
        free_port(),
        [("web-1", fleet[0].address), ("web-2", fleet[1].address)],
        [http_check(interval="200ms", fall=1, rise=1)],
        desired=2,
        min_healthy=1,
    )
    fleet[1].mode = "fail"
    daemon = start_daemon(cfg)
    wait_until(lambda: daemon.machines()["web-2"]["condition"] == "down", 5, "web-2 to be down")

    result = run_cli("status", "--url", daemon.url)

    assert result.returncode == 0, result.stdout + result.stderr
    services_part, machines_part, *_why_not_acting = result.stdout.split("\n\n")
    header, rows = _table(services_part)
    assert header[:3] == ["SERVICE", "STATE", "HEALTHY"], result.stdout
    assert rows[0][:5] == ["web", "degraded", "1", "0", "1"], result.stdout
    header, rows = _table(machines_part)
    assert header[:5] == ["SERVICE", "MACHINE", "ADDRESS", "LIFECYCLE", "CONDITION"], result.stdout
    by_machine = {row[1]: row for row in rows}
    assert by_machine["web-1"][2:5] == [fleet[0].address, "in_service", "up"], result.stdout
    assert by_machine["web-2"][2:5] == [fleet[1].address, "in_service", "down"], result.stdout
    assert "health=CRITICAL" in by_machine["web-2"][-1], result.stdout


def test_status_without_a_daemon_exits_3_with_a_clear_message(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("status", "--url", url)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"cannot reach healerd at {url}" in result.stderr, result.stderr
    assert "is it running?" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------------------------------------
# validate finds what would fail at run time; the shipped config works as written

REPO = Path(__file__).resolve().parents[2]


def _exec_config(tmp_path: Path, command: list[str], check_paths: list[str] | None = None) -> Path:
    checks = [{"name": "plugin", "kind": "exec", "interval": "5s", "command": command}]
    cfg = make_config(tmp_path, free_port(), [("web-1", "127.0.0.1:9")], checks)
    if check_paths is not None:
        cfg["daemon"]["check_paths"] = check_paths
    return write_config(tmp_path / "healerd.yaml", cfg)


def test_validate_refuses_a_plugin_that_is_not_executable_and_says_chmod(tmp_path: Path) -> None:
    (tmp_path / "checks").mkdir(exist_ok=True)
    plugin = tmp_path / "checks" / "check_x.sh"
    plugin.write_text("#!/bin/sh\necho OK\n")
    plugin.chmod(0o644)
    result = run_cli("validate", "-c", str(_exec_config(tmp_path, ["check_x.sh"])))
    assert result.returncode == 2, result
    assert f"found {plugin} but it is not executable: chmod +x {plugin}" in result.stderr, result.stderr
    assert re.search(r"healerd\.yaml:\d+: services\.web\.checks\[0\]\.command\[0\]:", result.stderr), result.stderr
    plugin.chmod(0o755)
    assert run_cli("validate", "-c", str(_exec_config(tmp_path, ["check_x.sh"]))).returncode == 0


def test_validate_refuses_a_plugin_that_does_not_exist(tmp_path: Path) -> None:
    result = run_cli("validate", "-c", str(_exec_config(tmp_path, ["check_nonexistent_plugin", "-H", "{host}"])))
    assert result.returncode == 2, result
    assert "plugin 'check_nonexistent_plugin' not found" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_validate_refuses_a_missing_check_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    result = run_cli("validate", "-c", str(_exec_config(tmp_path, ["check_dummy", "0"], [str(missing)])))
    assert result.returncode == 2, result
    assert f"folder {missing} does not exist; create it (mkdir -p {missing})" in result.stderr, result.stderr
    assert "daemon.check_paths[0]" in result.stderr


def test_validate_warns_about_an_empty_config(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    result = run_cli("validate", "-c", str(path))
    assert result.returncode == 2, result
    assert "the config is empty: 0 services" in result.stderr and "--allow-empty" in result.stderr, result
    assert "Traceback" not in result.stderr
    allowed = run_cli("validate", "-c", str(path), "--allow-empty")
    assert allowed.returncode == 0 and "0 services: nothing will be checked" in allowed.stderr, allowed


def test_the_default_playbook_is_found_when_the_config_lives_outside_the_repo(tmp_path: Path) -> None:
    """Only the config file, in a folder of its own: replace-machine ships inside the package."""
    text = (REPO / "config.example.yaml").read_text()
    path = tmp_path / "elsewhere" / "healerd.yaml"
    path.parent.mkdir()
    path.write_text(text.replace("check_paths: [./checks]", "check_paths: []"))
    result = run_cli("validate", "-c", str(path))
    assert result.returncode == 0, result
    assert "playbook replace-machine" in result.stdout, result.stdout


def test_check_on_the_shipped_config_before_the_daemon_ever_ran(tmp_path: Path) -> None:
    """As a new user runs it, right after cloning: no state yet, so no machines; a clear line, no traceback."""
    for name in ("config.example.yaml",):
        (tmp_path / name).write_text((REPO / name).read_text())
    for folder in ("checks", "playbooks"):
        (tmp_path / folder).mkdir()
        for f in (REPO / folder).iterdir():
            (tmp_path / folder / f.name).write_bytes(f.read_bytes())
    result = run_cli("check", "-c", str(tmp_path / "config.example.yaml"))
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr + result.stdout
    assert "service web: no machines" in result.stderr, result.stderr
    assert not (tmp_path / ".healerd" / "state.db").exists(), "healerd check must not create state"


def test_the_aws_example_in_the_docs_validates_as_pasted(tmp_path: Path) -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", (REPO / "docs" / "aws.md").read_text(), re.S)
    path = tmp_path / "aws.yaml"
    path.write_text(block)
    result = run_cli("validate", "-c", str(path))
    assert result.returncode == 0, result.stderr
