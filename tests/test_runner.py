"""The framework side of the check plugin API: drop-in Python checks, their timeouts and errors, and loading them."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from healerd import Check, CheckEnv, CheckOptions, CheckResult, PerfDatum, Status, Target
from healerd.config import ConfigError, load_config
from healerd.plugins import CHECK_KINDS
from healerd.runner import run_check
from healerd.targets import render_model

TARGET = Target("svc", "m1", "127.0.0.1:9")


class Options(CheckOptions):
    message: str = "fine"


class Probe(Check[Options]):
    """Base of the test checks: records what happened to its run."""

    kind = ""
    Config = Options

    def __init__(self) -> None:
        super().__init__(Options(), TARGET, env=CheckEnv())
        self.started = asyncio.Event()
        self.cancelled = 0
        self.finished = False


class Healthy(Probe):
    kind = "test_healthy"

    async def run(self) -> CheckResult:
        await asyncio.sleep(0.01)
        return CheckResult.ok(self.config.message, (PerfDatum("answer", 42.0),))


class Raises(Probe):
    kind = "test_raises"

    async def run(self) -> CheckResult:
        await asyncio.sleep(0)
        raise RuntimeError("disk on fire")


class Hangs(Probe):
    kind = "test_hangs"

    async def run(self) -> CheckResult:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return CheckResult.ok("woke up")


class Stubborn(Probe):
    """Swallows every cancellation and keeps going until the test releases it."""

    kind = "test_stubborn"

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def run(self) -> CheckResult:
        self.started.set()
        while not self.release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.cancelled += 1
        self.finished = True
        return CheckResult.ok("finally done")


class ReturnsJunk(Probe):
    kind = "test_junk"

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value

    async def run(self) -> CheckResult:
        return self.value  # type: ignore[return-value]


class RaisesCancelled(Probe):
    kind = "test_raises_cancelled"

    async def run(self) -> CheckResult:
        await asyncio.sleep(0)
        raise asyncio.CancelledError


class Exits(Probe):
    kind = "test_exits"

    async def run(self) -> CheckResult:
        await asyncio.sleep(0)
        sys.exit(2)  # a drop-in author used to Nagios exit codes


# ---------------------------------------------------------------------------------------------------------
# run_check: a check's bug or hang becomes its result


async def test_normal_result_comes_back_with_its_duration() -> None:
    result = await run_check(Healthy(), timeout=1)
    assert result.status is Status.OK
    assert result.message == "fine"
    assert result.metrics == (PerfDatum("answer", 42.0),)
    assert 0.01 <= result.duration < 0.5


async def test_check_that_raises_is_unknown_with_the_exception_text() -> None:
    result = await run_check(Raises(), timeout=1)
    assert result.status is Status.UNKNOWN
    assert result.message == "check raised RuntimeError: disk on fire"
    assert result.duration < 0.5


async def test_check_that_never_returns_is_unknown_at_the_timeout_and_cancelled() -> None:
    check = Hangs()
    started = time.monotonic()
    result = await run_check(check, timeout=0.5)
    elapsed = time.monotonic() - started
    assert result.status is Status.UNKNOWN
    assert result.message == "check timed out after 0.5s"
    assert 0.45 < elapsed < 1.0
    assert result.duration == pytest.approx(0.5, abs=0.1)
    await asyncio.sleep(0.01)
    assert check.cancelled == 1  # the abandoned run was told to stop, not left sleeping for an hour


async def test_check_that_swallows_cancellation_still_times_out() -> None:
    check = Stubborn()
    started = time.monotonic()
    runner = asyncio.create_task(run_check(check, timeout=0.5))
    try:
        # bounded wait: a runner that waited for the check to acknowledge its cancellation would hang here
        done, _ = await asyncio.wait({runner}, timeout=1.5)
        assert runner in done, "run_check is stuck waiting for a check that ignores cancellation"
        elapsed = time.monotonic() - started
        result = runner.result()
        assert result.status is Status.UNKNOWN
        assert result.message == "check timed out after 0.5s"
        assert 0.45 < elapsed < 1.0
        await asyncio.sleep(0.05)
        assert check.cancelled >= 1 and not check.finished  # it really did ignore the cancellation
    finally:
        check.release.set()
        await asyncio.wait({runner}, timeout=1)
    for _ in range(100):
        if check.finished:
            break
        await asyncio.sleep(0.01)
    assert check.finished


@pytest.mark.parametrize(
    ("value", "type_name"),
    [("all good", "str"), (None, "NoneType"), (0, "int"), (Status.OK, "Status")],
)
async def test_check_returning_something_else_than_a_checkresult_is_unknown(value: object, type_name: str) -> None:
    result = await run_check(ReturnsJunk(value), timeout=1)
    assert result.status is Status.UNKNOWN
    assert result.message.startswith(f"check returned {type_name}, not a CheckResult")
    assert "CheckResult.ok(" in result.message  # tells the author what to do


async def test_check_raising_cancelled_error_itself_is_unknown() -> None:
    result = await run_check(RaisesCancelled(), timeout=1)
    assert result.status is Status.UNKNOWN
    assert result.message == "check was cancelled"


async def test_check_calling_sys_exit_is_unknown_and_does_not_stop_the_loop() -> None:
    result = await run_check(Exits(), timeout=1)
    assert result.status is Status.UNKNOWN
    assert "SystemExit" in result.message


async def test_one_hanging_check_does_not_delay_another() -> None:
    hung, healthy = Hangs(), Healthy()
    finished_at: dict[str, float] = {}
    started = time.monotonic()

    async def timed(name: str, check: Probe) -> CheckResult:
        result = await run_check(check, timeout=1)
        finished_at[name] = time.monotonic() - started
        return result

    hung_result, healthy_result = await asyncio.gather(timed("hung", hung), timed("healthy", healthy))
    assert healthy_result.status is Status.OK and healthy_result.message == "fine"
    assert finished_at["healthy"] < 0.3
    assert hung_result.status is Status.UNKNOWN and "timed out" in hung_result.message
    assert 0.95 < finished_at["hung"] < 1.5


async def test_many_hung_and_stubborn_checks_all_time_out_together() -> None:
    checks: list[Probe] = [Hangs() for _ in range(20)] + [Stubborn() for _ in range(20)]
    started = time.monotonic()
    runners = [asyncio.create_task(run_check(c, timeout=0.5)) for c in checks]
    try:
        done, _ = await asyncio.wait(runners, timeout=1.5)
        elapsed = time.monotonic() - started
    finally:
        for c in checks:
            if isinstance(c, Stubborn):
                c.release.set()
        await asyncio.wait(runners, timeout=1)
    assert len(done) == len(checks)
    assert all(r.result().status is Status.UNKNOWN and "timed out" in r.result().message for r in runners)
    assert elapsed < 1.0  # concurrently, not one after the other
    await asyncio.sleep(0.05)


async def test_cancelling_run_check_cancels_the_check() -> None:
    check = Hangs()
    runner = asyncio.create_task(run_check(check, timeout=10))
    await asyncio.wait_for(check.started.wait(), 1)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await asyncio.sleep(0.01)
    assert check.cancelled == 1  # shutting down does not leave the check running


# ---------------------------------------------------------------------------------------------------------
# Drop-ins: Python files in daemon.check_paths become check kinds

DROPIN = '''\
"""A site-local check kind."""

from healerd import Check, CheckOptions, CheckResult, PerfDatum


class GreetingOptions(CheckOptions):
    greeting: str
    level: int = 0


class GreetingCheck(Check[GreetingOptions]):
    kind = "greeting"
    Config = GreetingOptions

    async def run(self) -> CheckResult:
        perf = (PerfDatum("level", float(self.config.level)),)
        text = f"{self.config.greeting} from {self.target.id}"
        if self.config.level >= 2:
            return CheckResult.critical(text, perf)
        return CheckResult.ok(text, perf)
'''


GREETING_CHECK = """\
      - name: hello
        kind: greeting
        greeting: "hello {host}:{port}"
        level: 2
        interval: 1s
        timeout: 500ms
"""
TCP_CHECK = "      - {name: port, kind: tcp}\n"


def config_text(checks: str = GREETING_CHECK, check_paths: str = "[./checks]") -> str:
    head = textwrap.dedent(
        f"""\
        daemon:
          listen: 127.0.0.1:19464
          state_dir: ./state
          check_paths: {check_paths}
        providers:
          lab: {{kind: static}}
        services:
          web:
            provider: lab
            machines:
              - {{id: web-1, address: "127.0.0.1:8001"}}
              - {{id: web-2, address: "127.0.0.1:8002"}}
            checks:
        """
    )
    return head + checks


def write_dropin(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "checks"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "healerd.yaml"
    path.write_text(text)
    return path


async def test_dropin_from_check_paths_is_a_check_kind_that_runs(tmp_path: Path) -> None:
    write_dropin(tmp_path, "greeting.py", DROPIN)
    cfg = load_config(write_config(tmp_path, config_text()))
    assert "greeting" in cfg.check_kinds
    (spec,) = cfg.services["web"].checks
    assert spec.kind == "greeting" and spec.timeout == 0.5
    assert spec.options.level == 2  # type: ignore[attr-defined]

    results: list[CheckResult] = []
    env = CheckEnv(tuple(cfg.daemon.check_paths), cfg.base_dir)
    try:
        for machine in cfg.services["web"].machines:
            target = Target("web", machine.id, machine.address)
            check: Check[Any] = spec.check_class(render_model(spec.options, target.fields()), target, env=env)
            results.append(await run_check(check, spec.timeout))
    finally:
        await env.close()
    assert [(r.status, r.message) for r in results] == [
        (Status.CRITICAL, "hello 127.0.0.1:8001 from web-1"),
        (Status.CRITICAL, "hello 127.0.0.1:8002 from web-2"),
    ]
    assert results[0].metrics == (PerfDatum("level", 2.0),)


def test_dropin_kind_is_not_known_to_a_config_without_that_folder(tmp_path: Path) -> None:
    write_dropin(tmp_path, "greeting.py", DROPIN)
    load_config(write_config(tmp_path, config_text()))
    assert CHECK_KINDS.get("greeting") is None  # loading one config does not leak kinds into the global registry
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, config_text(check_paths="[./elsewhere]")))
    text = str(info.value)
    assert "unknown check kind 'greeting'" in text
    assert "daemon.check_paths" in text  # says where drop-ins go


def test_dropin_options_are_validated_by_its_config_model(tmp_path: Path) -> None:
    write_dropin(tmp_path, "greeting.py", DROPIN)
    bad = config_text().replace("level: 2", "level: lots")
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, bad))
    (problem,) = info.value.problems
    assert problem.path == ("services", "web", "checks", 0, "level")
    assert problem.line is not None


def test_dropin_with_a_syntax_error_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    write_dropin(tmp_path, "greeting.py", DROPIN)
    broken = write_dropin(tmp_path, "broken.py", "from healerd import Check\n\ndef run(:\n    pass\n")
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, config_text()))
    (problem,) = info.value.problems  # the good drop-in next to it still loaded: "greeting" is a known kind
    assert problem.path == ("daemon", "check_paths")
    text = str(info.value)
    assert str(broken) in text
    assert "daemon.check_paths" in text
    assert "SyntaxError" in text


def test_dropin_raising_at_import_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    broken = write_dropin(tmp_path, "explodes.py", "raise ImportError('needs the frobnicate package')\n")
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, config_text(TCP_CHECK)))
    assert len(info.value.problems) == 1
    text = str(info.value)
    assert str(broken) in text and "needs the frobnicate package" in text
    assert "daemon.check_paths" in text


def test_dropin_reusing_a_builtin_kind_name_is_a_config_error(tmp_path: Path) -> None:
    clash = write_dropin(
        tmp_path,
        "myexec.py",
        "from healerd import Check, CheckOptions\n\n"
        "class MyExec(Check[CheckOptions]):\n    kind = 'exec'\n    Config = CheckOptions\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, config_text(TCP_CHECK)))
    assert len(info.value.problems) == 1
    text = str(info.value)
    assert str(clash) in text
    assert "'exec' is already provided by built-in" in text


async def test_network_check_that_gets_no_answer_is_critical_naming_the_timeout() -> None:
    """A target that accepts the connection and never answers (a hung process) is a problem found, not a
    check that could not decide: CRITICAL, as Nagios plugins report a socket timeout."""
    from healerd.checks import CheckEnv
    from healerd.checks.http import HttpCheck, HttpConfig
    from healerd.targets import Target

    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = CheckEnv()
    try:
        check = HttpCheck(
            HttpConfig(url=f"http://127.0.0.1:{port}/health"), Target("web", "m1", f"127.0.0.1:{port}"), env=env
        )
        result = await run_check(check, timeout=0.8)
        assert result.status is Status.CRITICAL
        assert result.message == "no answer within 800ms"
        assert accepted, "the check never connected"
        unknown = await run_check(check, timeout=0.3, timeout_status=Status.UNKNOWN)  # timeout_status: unknown
        assert unknown.status is Status.UNKNOWN
    finally:
        for w in accepted:
            w.close()
        server.close()
        await env.close()


class ReportsInTime(Probe):
    """Gathers answers until just before its timeout, then reports what it has (as an echo check does)."""

    kind = "test_reports_in_time"

    async def run(self) -> CheckResult:
        left = self.time_left()
        await asyncio.sleep(max(0.0, left - 0.1))
        return CheckResult.critical(f"0 of 3 answered, {left:.2f}s to wait")


async def test_a_check_that_watches_its_time_left_reports_its_findings_instead_of_a_bare_timeout() -> None:
    result = await run_check(ReportsInTime(), timeout=0.5)
    assert result.status is Status.CRITICAL and result.message.startswith("0 of 3 answered")
    assert 0.45 <= float(result.message.split(", ")[1].split("s")[0]) <= 0.5
    assert 0.35 < result.duration < 0.5
    # outside the runner there is no deadline
    assert ReportsInTime().time_left() == float("inf")


class BreaksWhenBuilt(Check[Options]):
    """A kind whose constructor fails for some machines, as a third-party kind's might, with any exception."""

    kind = "test_breaks_when_built"
    Config = Options

    def __init__(self, config: Options, target: Target, *, env: CheckEnv) -> None:
        if target.id == "odd":
            raise LookupError(f"no such thing as {config.message}")
        super().__init__(config, target, env=env)

    async def run(self) -> CheckResult:
        return CheckResult.ok("built")


async def test_a_check_that_cannot_be_built_for_a_machine_is_unknown_there_saying_why_and_runs_elsewhere() -> None:
    from healerd.config import CheckSpec
    from healerd.runner import build_check

    spec = CheckSpec(
        "c", BreaksWhenBuilt.kind, 1.0, 1.0, None, 3, 2, 20.0, 30.0, Options(message="{id}"), BreaksWhenBuilt,
        Status.UNKNOWN, 300.0, "x",
    )  # fmt: skip
    env = CheckEnv()
    odd = await run_check(build_check(spec, Target("svc", "odd", "127.0.0.1:9"), env), timeout=1)
    assert odd.status is Status.UNKNOWN
    assert odd.message == "cannot run test_breaks_when_built on '127.0.0.1:9': LookupError: no such thing as odd"
    even = await run_check(build_check(spec, Target("svc", "even", "127.0.0.1:9"), env), timeout=1)
    assert even.status is Status.OK and even.message == "built"
