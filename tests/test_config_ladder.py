"""The escalation ladder in the config: a playbook its provider cannot run is refused naming the verb it lacks
(never silently ignored), a ladder's unknown playbook gets a did-you-mean, and the rungs a service ends up with
follow what was written."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config_table import BASE, MANAGED, swap

from healerd.config import ConfigError, load_config

CHECK = "    checks: [{name: health, kind: http, url: 'http://{address}/health'}]\n"


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "healerd.yaml"
    path.write_text(text)
    return load_config(path)


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.render()


def test_a_static_service_naming_a_playbook_that_launches_is_refused_naming_the_verb(tmp_path: Path) -> None:
    said = refused(tmp_path, BASE + "    remediation: {playbook: replace-machine}\n")
    where = "services.web.remediation.playbook"
    assert f"{where}: playbook 'replace-machine' needs its provider to quarantine and launch machines" in said
    assert "provider 'lab' (static) cannot" in said and "a `command` step" in said  # what it can do instead
    assert "restart-machine" not in said  # a static provider cannot restart either


def test_a_ladder_rung_the_provider_cannot_run_is_refused_with_its_index(tmp_path: Path) -> None:
    said = refused(tmp_path, BASE + "    remediation: {ladder: [{playbook: restart-machine}]}\n")
    assert (
        "services.web.remediation.ladder[0].playbook: playbook 'restart-machine' needs its provider to restart" in said
    )


def test_an_unknown_playbook_in_a_ladder_gets_a_did_you_mean(tmp_path: Path) -> None:
    text = MANAGED + CHECK + "    remediation: {ladder: [{playbook: restart-machin}, {playbook: replace-machine}]}\n"
    said = refused(tmp_path, swap("daemon:\n", "daemon:\n", "daemon:\n  state_dir: ./state\n" + text))
    assert "ladder[0].playbook: playbook 'restart-machin' not found" in said
    assert "did you mean 'restart-machine'?" in said


@pytest.mark.parametrize(
    ("remediation", "rungs"),
    [
        ("", ["replace-machine"]),  # a managed service: its playbook
        (
            "    remediation: {ladder: [{playbook: restart-machine, timeout: 2m}, {playbook: replace-machine}]}\n",
            ["restart-machine", "replace-machine"],
        ),
    ],
)
def test_a_managed_service_s_rungs(tmp_path: Path, remediation: str, rungs: list[str]) -> None:
    config = load(tmp_path, "daemon:\n  state_dir: ./state\n" + MANAGED + CHECK + remediation)
    assert [r.playbook for r in config.services["web"].rungs] == rungs  # type: ignore[attr-defined]


def test_a_static_service_without_a_ladder_has_no_rung_and_loads(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    assert config.services["web"].rungs == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("ladder", "says"),
    [
        ("[]", "ladder"),
        ("[{playbook: restart-machine, timeout: 0s}]", "timeout"),
    ],
)
def test_a_malformed_ladder_is_refused(tmp_path: Path, ladder: str, says: str) -> None:
    text = "daemon:\n  state_dir: ./state\n" + MANAGED + CHECK + f"    remediation: {{ladder: {ladder}}}\n"
    if "\n" in ladder:
        text = (
            "daemon:\n  state_dir: ./state\n"
            + MANAGED
            + CHECK
            + f"    remediation:\n      ladder: {ladder.split(chr(10))[0]}\n"
            + ladder.split(chr(10))[1]
            + "\n"
        )
    assert says in refused(tmp_path, text)
