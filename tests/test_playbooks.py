"""Playbooks (healerd.remediation.playbooks.load_playbooks): the shipped one, and every mistake reported with its file,
line and YAML path, so an operator can fix a playbook without reading healerd's source."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from e2e.helpers import run_cli

from healerd.config import ConfigError, load_config
from healerd.plugins import ACTIONS
from healerd.remediation.actions import QuarantineParams
from healerd.remediation.playbooks import DEFAULT_PLAYBOOK, OnFailure, load_playbooks

SHIPPED = Path(__file__).resolve().parents[1] / "playbooks"

REPLACE_MACHINE_ACTIONS = (
    "rotation.remove",
    "machine.quarantine",
    "forensics.collect",
    "machine.launch_replacement",
    "checks.await_healthy",
    "rotation.add",
    "notify",
)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_shipped_replace_machine_loads_with_its_seven_steps() -> None:
    books, problems = load_playbooks([SHIPPED])
    assert problems == []
    assert DEFAULT_PLAYBOOK == "replace-machine"
    book = books["replace-machine"]
    assert book.path == SHIPPED / "replace-machine.yaml"
    assert book.description
    assert book.actions == REPLACE_MACHINE_ACTIONS
    assert [s.action for s in book.steps] == list(REPLACE_MACHINE_ACTIONS)
    assert [s.index for s in book.steps] == list(range(7))
    steps = {s.action: s for s in book.steps}
    # `timeout: 10m` on await_healthy; the others keep their action's default
    assert steps["checks.await_healthy"].timeout == 600.0
    assert steps["machine.launch_replacement"].timeout == 300.0
    assert steps["notify"].timeout == 30.0
    for action in ("rotation.remove", "machine.quarantine", "forensics.collect", "rotation.add"):
        assert steps[action].timeout == 120.0, action
    # a launch error is retried twice; nothing else is
    assert steps["machine.launch_replacement"].retries == 2
    assert all(s.retries == 0 for s in book.steps if s.action != "machine.launch_replacement")
    assert all(s.on_failure is OnFailure.ABORT for s in book.steps)
    quarantine = steps["machine.quarantine"].params
    assert isinstance(quarantine, QuarantineParams)
    assert quarantine.freeze is False


def test_every_step_key_is_parsed(tmp_path: Path) -> None:
    write(
        tmp_path,
        "careful.yaml",
        """
        name: careful
        description: freeze the machine, do not stop for a failed forensics collection
        steps:
          - action: rotation.remove
            timeout: 1500ms
          - action: machine.quarantine
            with: {freeze: true}
            retries: 3
          - action: forensics.collect
            on_failure: continue
            timeout: 2m
          - action: notify
            on_failure: abort
        """,
    )
    books, problems = load_playbooks([tmp_path])
    assert problems == []
    book = books["careful"]
    remove, quarantine, forensics, notify = book.steps
    assert remove.timeout == 1.5
    assert quarantine.params == QuarantineParams(freeze=True)
    assert quarantine.retries == 3
    assert forensics.on_failure is OnFailure.CONTINUE
    assert forensics.timeout == 120.0
    assert notify.on_failure is OnFailure.ABORT
    assert remove.on_failure is OnFailure.ABORT  # the default


def test_every_problem_is_reported_with_its_file_line_and_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """
        name: bad
        steps:
          - action: rotation.remov
          - action: machine.quarantine
            timeout: soon
          - action: forensics.collect
            retry: 2
          - action: machine.quarantine
            with:
              freeze: maybe
              colour: red
          - action: notify
            on_failure: ignore
        """,
    )
    books, problems = load_playbooks([tmp_path])
    assert "bad" not in books, "a playbook with a problem must not be usable"
    rendered = [p.render() for p in problems]
    assert all(p.path == path for p in problems)
    by_where = {p.where: p for p in problems}
    assert set(by_where) == {
        "steps[0].action",
        "steps[1].timeout",
        "steps[2].retry",
        "steps[3].with.freeze",
        "steps[3].with.colour",
        "steps[4].on_failure",
    }, rendered
    # the line of the offending key, as an editor counts them
    assert {w: p.line for w, p in by_where.items()} == {
        "steps[0].action": 3,
        "steps[1].timeout": 5,
        "steps[2].retry": 7,
        "steps[3].with.freeze": 10,
        "steps[3].with.colour": 11,
        "steps[4].on_failure": 13,
    }, rendered
    # unknown action: names it, suggests the near one, lists the valid ones
    action = by_where["steps[0].action"].render()
    assert action.startswith(f"{path}:3: steps[0].action: ")
    assert "'rotation.remov'" in action
    assert "did you mean 'rotation.remove'?" in action
    for kind in ACTIONS.kinds():
        assert kind in action
    # bad duration: says what a duration looks like
    duration = by_where["steps[1].timeout"].render()
    assert duration.startswith(f"{path}:5: steps[1].timeout: ")
    assert "'soon'" in duration
    assert "5s" in duration
    # bad value of a `with` parameter and an unknown one
    assert by_where["steps[3].with.freeze"].render().startswith(f"{path}:10: steps[3].with.freeze: ")
    assert "expected true or false, got the text 'maybe'" in by_where["steps[3].with.freeze"].message
    assert by_where["steps[3].with.colour"].render().startswith(f"{path}:11: steps[3].with.colour: ")
    # on_failure outside its two values
    on_failure = by_where["steps[4].on_failure"].render()
    assert on_failure.startswith(f"{path}:13: steps[4].on_failure: ")
    assert "'abort'" in on_failure
    assert "'continue'" in on_failure


def test_an_unknown_step_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    write(
        tmp_path,
        "typo.yaml",
        """
        name: typo
        steps:
          - action: machine.launch_replacement
            retry: 2
        """,
    )
    _, problems = load_playbooks([tmp_path])
    (problem,) = problems
    assert problem.where == "steps[0].retry"
    assert problem.line == 4
    assert "unknown key 'retry'" in problem.message
    assert "did you mean 'retries'?" in problem.message


def test_top_level_problems_and_yaml_syntax_errors(tmp_path: Path) -> None:
    no_steps = write(tmp_path, "a-no-steps.yaml", "name: empty\nsteps: []\n")
    bad_name = write(tmp_path, "b-bad-name.yaml", "name: 'two words'\nsteps:\n  - action: notify\n")
    unknown = write(tmp_path, "c-unknown.yaml", "name: c\nstep:\n  - action: notify\n")
    broken = write(tmp_path, "d-broken.yaml", "name: d\nsteps:\n  - action: notify\n  - [unclosed\n")
    books, problems = load_playbooks([tmp_path])
    assert set(books) == {"replace-machine", "restart-machine", "reboot-machine"}  # only the built-in ones
    files = {p.path for p in problems}
    assert files == {no_steps, bad_name, unknown, broken}, [p.render() for p in problems]
    by_file = {p.path: p for p in problems if p.path != unknown}
    assert by_file[no_steps].where == "steps"
    assert by_file[no_steps].line == 2
    assert by_file[bad_name].where == "name"
    assert by_file[bad_name].line == 1
    broken_line = by_file[broken].line
    assert broken_line is not None and broken_line >= 4
    assert "cannot read" in by_file[broken].message
    unknown_problems = {p.where for p in problems if p.path == unknown}
    assert unknown_problems == {"step", "steps"}  # `step` is not a key; `steps` is missing


def test_good_playbooks_load_beside_a_broken_one_and_later_folders_win(tmp_path: Path) -> None:
    first, second = tmp_path / "site", tmp_path / "local"
    write(first, "replace.yaml", "name: replace\ndescription: first\nsteps:\n  - action: notify\n")
    write(first, "broken.yaml", "name: broken\nsteps:\n  - action: nope\n")
    write(second, "replace.yaml", "name: replace\ndescription: second\nsteps:\n  - action: rotation.remove\n")
    books, problems = load_playbooks([first, second, tmp_path / "missing"])
    assert sorted(books) == ["reboot-machine", "replace", "replace-machine", "restart-machine"]  # 3 built in
    assert books["replace"].description == "second"
    assert books["replace"].actions == ("rotation.remove",)
    assert [p.path.name for p in problems] == ["broken.yaml"]


CONFIG = """
daemon:
  state_dir: ./state
  playbook_paths: [{playbooks}]
providers:
  demo: {{kind: local}}
images:
  demo-web:
    provider: demo
    versions:
      v1: {{command: ["{{python}}", -m, healerd.demo, --port, "{{port}}"]}}
    known_good: v1
services:
  web:
    provider: demo
    image: demo-web
    desired: 3
    checks:
      - {{name: health, kind: http, url: "http://{{address}}/health", interval: 1s}}
    remediation:
      playbook: {playbook}
"""


def test_config_refuses_a_service_whose_playbook_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "healerd.yaml"
    path.write_text(CONFIG.lstrip("\n").format(playbooks=SHIPPED, playbook="replace-machin"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.path == ("services", "web", "remediation", "playbook")
    assert problem.line == 20
    rendered = caught.value.render()
    assert f"{path}:20: services.web.remediation.playbook: playbook 'replace-machin' not found" in rendered
    assert str(SHIPPED) in rendered  # where it looked
    assert "replace-machine" in rendered.split("not found", 1)[1]  # what there is

    # the same config naming the shipped playbook is fine
    path.write_text(CONFIG.lstrip("\n").format(playbooks=SHIPPED, playbook="replace-machine"))
    config = load_config(path)
    assert config.services["web"].remediation.playbook == "replace-machine"


def test_config_reports_a_broken_playbook_with_its_file_and_line(tmp_path: Path) -> None:
    books = tmp_path / "playbooks"
    broken = write(books, "replace-machine.yaml", "name: replace-machine\nsteps:\n  - action: launch\n")
    path = tmp_path / "healerd.yaml"
    path.write_text(CONFIG.lstrip("\n").format(playbooks=books, playbook="replace-machine"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    rendered = caught.value.render()
    assert f"{broken}:3: steps[0].action: unknown action 'launch'" in rendered
    assert [p.path for p in caught.value.problems] == [("daemon", "playbook_paths")]


def test_the_built_in_default_playbook_is_always_there_and_a_site_copy_overrides_it(tmp_path: Path) -> None:
    books, problems = load_playbooks([])
    assert problems == [] and books["replace-machine"].actions[0] == "rotation.remove"
    assert books["replace-machine"].path.name == "replace-machine.yaml"
    write(tmp_path, "mine.yaml", "name: replace-machine\ndescription: ours\nsteps:\n  - action: notify\n")
    books, _ = load_playbooks([tmp_path])
    assert books["replace-machine"].description == "ours"


#: pydantic's own phrasing, which no message to an operator may use
PYDANTIC_WORDS = ("Input should", "Field required", "Value error", "type=", "valid dictionary", "pydantic")

#: (step, line, key, what the message says): a playbook with one mistake per step
MISTAKES = [
    ("  - action: rotation.remove\n    retries: -1\n", "steps[0].retries", "must be at least 0, got -1; use 0 or more"),
    ("  - action: notify\n    timeout: 0s\n", "steps[1].timeout", "timeout must be above 0 (got 0s); use a duration"),
    ("  - action: rotation.remov\n", "steps[2].action", "unknown action 'rotation.remov' (did you mean"),
    (
        "  - action: notify\n    on_failure: contineu\n",
        "steps[3].on_failure",
        "must be one of 'abort' or 'continue', got 'contineu' (did you mean 'continue'?)",
    ),
    ("  - with: {freeze: true}\n", "steps[4].action", "missing required key 'action'; add `action: ...` here"),
    (
        "  - action: machine.quarantine\n    with: [freeze]\n",
        "steps[5].with",
        "expected a mapping (key: value), got a list ['freeze']; write key: value lines",
    ),
    ("  - action: notify\n    retries: true\n", "steps[6].retries", "got true (a boolean); write a number"),
    ("  - action: notify\n    retries: 99\n", "steps[7].retries", "must be at most 20, got 99; use 20 or less"),
    ("  - just text\n", "steps[8]", "expected a mapping (key: value), got the text 'just text'; write key: value"),
]


@pytest.mark.e2e  # runs `healerd validate`
def test_validate_tells_every_playbook_mistake_in_healerds_words(tmp_path: Path) -> None:
    books = tmp_path / "playbooks"
    text = "name: bad\nsteps:\n" + "".join(step for step, _, _ in MISTAKES)
    bad = write(books, "bad.yaml", text)
    config = tmp_path / "healerd.yaml"
    config.write_text(CONFIG.lstrip("\n").format(playbooks=books, playbook="replace-machine"))
    result = run_cli("validate", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    told = [line for line in result.stderr.splitlines() if f"{bad}:" in line]
    assert len(told) == len(MISTAKES), result.stderr
    first = 3  # the line of the step, after name: and steps:
    for (step, where, hint), line in zip(MISTAKES, told, strict=True):
        # the line of the step's offending key (a missing key, or a step that is no mapping: the step's own line)
        key = where.rsplit(".", 1)[-1]
        at = next((first + k for k, s in enumerate(step.splitlines()) if f" {key}:" in s), first)
        assert f"playbook {bad}:{at}: {where}: " in line and hint in line, line
        assert not any(word in line for word in PYDANTIC_WORDS), line
        first += len(step.splitlines())
