"""The `command` provider against real executables written per test: what the executable is given, and what
healerd makes of every way it can answer (a reply, exit 3, a failure, garbage, a hang)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from healerd.checks import _spawn
from healerd.machines import Lifecycle, Machine
from healerd.providers.base import LaunchRequest, ProviderError, ProviderUnsupported
from healerd.providers.command import CommandProvider
from healerd.providers.command_protocol import CommandImage, CommandOptions
from healerd.providers.local import LocalOptions, LocalProvider
from healerd.providers.static import StaticProvider

MACHINE = Machine("web", "web-1", "127.0.0.1:8080", Lifecycle.IN_SERVICE, {"zone": "lab-a"})

#: a Python executable that records its argv and request, then answers what `ANSWER` says for its verb
RECORDER = """#!{python}
import json, os, sys
verb = sys.argv[-1]
req = json.load(sys.stdin)
with open(os.path.join({folder!r}, verb + ".json"), "w") as f:
    json.dump({{"argv": sys.argv[1:], "request": req, "env": dict(os.environ)}}, f)
sys.stderr.write("did " + verb + "\\n")
print(json.dumps({answer}.get(verb, {{}})))
"""


@pytest.fixture(autouse=True, params=["posix_spawn", "asyncio"])
def spawn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both ways of starting the executable: posix_spawn with the loop watching its pipes
    (Linux, the default) and asyncio's subprocess support (where there are no pidfds)."""
    if request.param == "posix_spawn" and not _spawn.AVAILABLE:
        pytest.skip("posix_spawn path needs Linux 5.3+ (pidfd_open)")
    monkeypatch.setattr(_spawn, "AVAILABLE", request.param == "posix_spawn")
    return str(request.param)


def executable(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def recorder(tmp_path: Path, answer: dict[str, Any]) -> Path:
    return executable(
        tmp_path, "provider", RECORDER.format(python=sys.executable, folder=str(tmp_path), answer=repr(answer))
    )


def provider(command: list[str], **options: Any) -> CommandProvider:
    return CommandProvider("lab", CommandOptions(command=command, **options))


def sh(tmp_path: Path, body: str, name: str = "provider") -> Path:
    return executable(tmp_path, name, "#!/bin/sh\n" + body)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def test_launch_sends_the_request_on_stdin_with_the_verb_last_and_reads_the_machine(tmp_path: Path) -> None:
    machine = {"id": "web-7", "address": "127.0.0.1:9001", "zone": "lab-b", "attributes": {"pid": 42}}
    exe = recorder(tmp_path, {"launch": {"machine": machine}})
    p = provider([str(exe), "--cluster", "pve1"])
    spec = CommandImage.model_validate({"template": 9041, "cores": 2})
    before = time.time()

    got = await p.launch(LaunchRequest("web", "web-7", "web-img", "v41", spec, "inc-1"))

    assert got == Machine("web", "web-7", "127.0.0.1:9001", Lifecycle.PROBATION, {"pid": "42", "zone": "lab-b"})
    seen = json.loads((tmp_path / "launch.json").read_text())
    assert seen["argv"] == ["--cluster", "pve1", "launch"]
    req = seen["request"]
    assert {k: req[k] for k in ("protocol", "verb", "provider", "service", "machine_id", "image", "version")} == {
        "protocol": 1,
        "verb": "launch",
        "provider": "lab",
        "service": "web",
        "machine_id": "web-7",
        "image": "web-img",
        "version": "v41",
    }
    assert req["spec"] == {"template": 9041, "cores": 2} and req["incident"] == "inc-1"
    assert before + 600 - 5 <= req["deadline"] <= time.time() + 600, "launch gets launch_timeout (10m by default)"


async def test_a_provider_with_zones_is_asked_for_a_zone_and_its_reply_says_where_the_machine_is(
    tmp_path: Path,
) -> None:
    machine = {"id": "web-8", "address": "127.0.0.1:9002", "zone": "lab-b"}
    exe = recorder(tmp_path, {"launch": {"machine": machine}})
    p = provider([str(exe)], zones=["lab-a", "lab-b"])
    spec = CommandImage.model_validate({})
    assert p.zones(None) == ("lab-a", "lab-b")  # type: ignore[arg-type]

    got = await p.launch(LaunchRequest("web", "web-8", "web-img", "v1", spec, None, zone="lab-b"))

    assert got.zone == "lab-b"
    assert json.loads((tmp_path / "launch.json").read_text())["request"]["zone"] == "lab-b"
    plain = await provider([str(exe)]).launch(LaunchRequest("web", "web-8", "web-img", "v1", spec, None))
    assert plain.zone == "lab-b"
    assert "zone" not in json.loads((tmp_path / "launch.json").read_text())["request"], "no zones: none asked for"


async def test_machine_verbs_carry_the_machine_and_read_their_replies(tmp_path: Path) -> None:
    exe = recorder(
        tmp_path,
        {
            "alive": {"alive": False},
            "quarantine": {"evidence": {"snapshot": "snap-1"}},
            "describe": {"vm": "web-1", "state": "running"},
            "console": {"text": "login: "},
        },
    )
    p = provider([str(exe)], timeout="5s")
    await p.release(MACHINE)
    assert await p.alive(MACHINE) is False
    assert await p.quarantine(MACHINE, "inc-9", freeze=True) == {"snapshot": "snap-1"}
    assert await p.describe(MACHINE) == {"vm": "web-1", "state": "running"}
    console = await p.console(MACHINE)
    await p.terminate(MACHINE)

    quarantine = json.loads((tmp_path / "quarantine.json").read_text())["request"]
    assert quarantine["machine"] == {
        "id": "web-1",
        "address": "127.0.0.1:8080",
        "zone": "lab-a",
        "attributes": {"zone": "lab-a"},
    }
    assert quarantine["incident"] == "inc-9" and quarantine["freeze"] is True
    assert json.loads((tmp_path / "console.json").read_text())["request"]["limit"] == 1 << 20
    assert time.time() < quarantine["deadline"] <= time.time() + 5
    # the console is the executable's text, then the stderr of the last calls made for the machine
    assert console.startswith("login: \n")
    assert "did alive" in console and "did console" in console and "did release" not in console  # the last 4


async def test_stdout_that_is_not_json_fails_naming_the_executable_the_verb_and_stderr(tmp_path: Path) -> None:
    exe = sh(tmp_path, 'echo "cannot reach the hypervisor" >&2\necho "OK, done"\n')
    with pytest.raises(ProviderError) as err:
        await provider([str(exe)]).alive(MACHINE)
    message = str(err.value)
    assert f"{exe} alive" in message and "not one JSON object: 'OK, done\\n'" in message, message
    assert "stderr: cannot reach the hypervisor" in message
    with pytest.raises(ProviderError, match=r"JSON but not an object"):
        await provider([str(sh(tmp_path, "echo '[1]'\n", "list-reply"))]).alive(MACHINE)


async def test_a_failing_exit_names_its_status_and_quotes_the_first_500_bytes_of_stderr(tmp_path: Path) -> None:
    exe = sh(tmp_path, "printf 'E%.0s' $(seq 2000) >&2\nexit 1\n")
    with pytest.raises(ProviderError) as err:
        await provider([str(exe)]).terminate(MACHINE)
    message = str(err.value)
    assert f"provider lab: {exe} terminate: exited 1; stderr: " in message
    assert message.endswith("E" * 500) and "E" * 501 not in message
    assert not isinstance(err.value, ProviderUnsupported)


async def test_exit_3_is_unsupported_and_remembered(tmp_path: Path) -> None:
    count = tmp_path / "calls"
    exe = sh(tmp_path, f'echo x >> {count}\n[ "$1" = restart ] && exit 3\necho "{{}}"\n')
    p = provider([str(exe)])
    assert p.supports("restart")
    with pytest.raises(ProviderUnsupported, match="restart: not supported"):
        await p.restart(MACHINE)
    assert not p.supports("restart") and p.supports("reboot")
    with pytest.raises(ProviderUnsupported):
        await p.restart(MACHINE)
    assert count.read_text().count("x") == 1, "an unsupported verb is not asked again"
    # a verb healerd can do without is skipped: no console text is an empty console, not a failure
    q = provider([str(sh(tmp_path, "exit 3\n", "nothing"))])
    assert await q.console(MACHINE) != "" and await q.quarantine(MACHINE, "inc-1") == {}
    assert not q.supports("console")


async def test_verbs_not_claimed_are_never_run(tmp_path: Path) -> None:
    exe = sh(tmp_path, f"touch {tmp_path}/ran\necho '{{}}'\n")
    p = provider([str(exe)], verbs=["list", "launch", "terminate"])
    assert not p.supports("reboot")
    with pytest.raises(ProviderUnsupported):
        await p.reboot(MACHINE)
    assert await p.alive(MACHINE) is True
    assert not (tmp_path / "ran").exists()


async def test_built_in_kinds_say_what_they_support() -> None:
    local = LocalProvider("demo", LocalOptions())
    assert local.supports("launch") and local.supports("quarantine")
    assert local.supports("restart") and local.supports("reboot")  # its process, started again
    static = StaticProvider("lb", StaticProvider.Config())
    assert static.supports("list") and not static.supports("launch") and not static.supports("restart")
    with pytest.raises(ProviderUnsupported):
        await static.restart(MACHINE)


async def test_a_hang_past_the_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    exe = sh(
        tmp_path,
        f"trap 'echo TERM >> {tmp_path}/signals; exit 143' TERM\n"
        f"sleep 300 &\necho $$ $! > {pids}\necho 'waiting for the API' >&2\nwhile :; do sleep 0.05; done\n",
    )
    p = provider([str(exe)], timeout="700ms")
    started = time.monotonic()
    with pytest.raises(ProviderError) as err:
        await p.alive(MACHINE)
    assert 0.6 < time.monotonic() - started < 3
    assert "alive: timed out after 0.7s (its process group was killed); stderr: waiting for the API" in str(err.value)
    shell, child = (int(x) for x in pids.read_text().split())
    for _ in range(100):  # SIGKILL comes 2s after SIGTERM; reaping is the loop's business
        if not alive(shell) and not alive(child):
            break
        await asyncio.sleep(0.05)
    assert not alive(shell) and not alive(child), "a process of the timed-out call survived"
    assert (tmp_path / "signals").read_text() == "TERM\n", "SIGTERM comes first"


async def test_env_file_secrets_reach_the_executable_and_nothing_else(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    secret = "hunter2-Zq8v"
    env_file = tmp_path / "provider.env"
    env_file.write_text(f"# the hypervisor's API token\nPVE_TOKEN={secret}\n\nPVE_USER=healerd\n")
    exe = sh(tmp_path, f'echo "$PVE_TOKEN" > {tmp_path}/seen\necho "auth failed with token $PVE_TOKEN" >&2\nexit 1\n')
    p = provider([str(exe)], env_file=str(env_file))
    with pytest.raises(ProviderError) as err:
        await p.terminate(MACHINE)
    assert (tmp_path / "seen").read_text().strip() == secret
    assert secret not in str(err.value) and "auth failed with token [secret]" in str(err.value)
    assert logs and not [line for line in logs if secret in repr(line)]
    assert secret not in await p.console(MACHINE)
    said = [line for line in logs if line["event"] == "provider stderr"]
    assert said and said[0]["machine"] == "web-1" and said[0]["service"] == "web"

    env_file.write_text("PVE_TOKEN\n")
    with pytest.raises(ValidationError) as bad:
        CommandOptions(command=[str(exe)], env_file=str(env_file))
    assert "line 1 is not KEY=VALUE" in str(bad.value)


async def test_a_reply_missing_its_fields_fails_saying_what_is_missing(tmp_path: Path) -> None:
    exe = recorder(tmp_path, {"alive": {"up": True}, "launch": {"machine": {"id": "web-1"}}, "list": {}})
    p = provider([str(exe)])
    with pytest.raises(ProviderError, match=r"alive: the reply must carry 'alive': true or false; got nothing"):
        await p.alive(MACHINE)
    with pytest.raises(ProviderError, match=r"launch: machine.address must be a string"):
        await p.launch(LaunchRequest("web", "web-1", "img", "v1", CommandImage()))


def test_options_are_checked_when_the_config_loads(tmp_path: Path) -> None:
    def problem(**options: Any) -> str:
        with pytest.raises(ValidationError) as err:
            CommandOptions.model_validate(options)
        return str(err.value)

    assert "give the executable's full path" in problem(command=["providers/pve"])
    assert "does not exist" in problem(command=[str(tmp_path / "missing")])
    plain = tmp_path / "plain"
    plain.write_text("")
    assert f"chmod +x {plain}" in problem(command=[str(plain)])
    assert "unknown verb(s) snapshot" in problem(command=["/bin/true"], verbs=["list", "snapshot"])
    assert "add it to verbs" in problem(command=["/bin/true"], verbs=["launch"])
    assert "timeout must be above 0" in problem(command=["/bin/true"], timeout="0s")
    opts = CommandOptions.model_validate({"command": ["true"], "timeout": "1m"})
    assert opts.timeout == 60 and opts.launch_timeout == 600
