"""The `exec` check kind against real Nagios plugins, run through the framework (run_check and its timeout)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from conftest import PLUGIN_DIR, free_port, require_binary

from healerd.checks import CheckEnv, _spawn
from healerd.checks.exec import ExecCheck, ExecConfig
from healerd.results import CheckResult, Status
from healerd.runner import run_check
from healerd.targets import Target, render_model

TARGET = Target("svc", "m1", "127.0.0.1:9")
StartApp = Callable[[web.Application], Awaitable[str]]


def plugin(name: str) -> str:
    return require_binary(PLUGIN_DIR / name)


@pytest.fixture(autouse=True, params=["posix_spawn", "asyncio"])
def spawn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both ways of starting a plugin: posix_spawn with the loop watching its pipe (Linux,
    the default) and asyncio's subprocess support (where there are no pidfds)."""
    if request.param == "posix_spawn" and not _spawn.AVAILABLE:
        pytest.skip("posix_spawn path needs Linux 5.3+ (pidfd_open)")
    monkeypatch.setattr(_spawn, "AVAILABLE", request.param == "posix_spawn")
    return str(request.param)


def exec_check(env: CheckEnv, command: list[str], /, target: Target = TARGET, **options: object) -> ExecCheck:
    return ExecCheck(ExecConfig(command=command, **options), target, env=env)


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


async def wait_for_pid(path: Path, timeout: float = 2.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = read_pid(path)
        if pid is not None:
            return pid
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} was never written")


async def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Let the loop run until every pid is gone or the timeout passes; returns the survivors."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return []
        await asyncio.sleep(0.02)
    return [p for p in pids if alive(p)]


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# ---------------------------------------------------------------------------------------------------------
# check_dummy: the exit code and text are the verdict


@pytest.mark.parametrize(
    ("code", "status", "word"),
    [
        ("0", Status.OK, "OK"),
        ("1", Status.WARNING, "WARNING"),
        ("2", Status.CRITICAL, "CRITICAL"),
        ("3", Status.UNKNOWN, "UNKNOWN"),
    ],
)
async def test_check_dummy_exit_code_is_the_status(env: CheckEnv, code: str, status: Status, word: str) -> None:
    plugin("check_dummy")
    result = await run_check(exec_check(env, ["check_dummy", code, "disk is fine, mostly"]), timeout=5)
    assert result.status is status
    assert result.message == f"{word}: disk is fine, mostly"
    assert result.metrics == ()
    assert 0 < result.duration < 5


# ---------------------------------------------------------------------------------------------------------
# check_tcp


async def test_check_tcp_on_a_listening_port_is_ok_with_time_in_seconds(env: CheckEnv) -> None:
    plugin("check_tcp")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await run_check(exec_check(env, ["check_tcp", "-H", "127.0.0.1", "-p", str(port)]), timeout=5)
    assert result.status is Status.OK, result.message
    assert result.message.startswith("TCP OK")
    assert f"port {port}" in result.message
    (time_metric,) = [m for m in result.metrics if m.label == "time"]
    assert time_metric.uom == "s"
    assert time_metric.value is not None and 0 <= time_metric.value < 1
    assert time_metric.min == 0.0 and time_metric.max == 10.0  # check_tcp's default socket timeout


async def test_check_tcp_on_a_closed_port_is_critical(env: CheckEnv) -> None:
    plugin("check_tcp")
    port = free_port()  # bound and released: nothing listens there
    result = await run_check(exec_check(env, ["check_tcp", "-H", "127.0.0.1", "-p", str(port)]), timeout=5)
    assert result.status is Status.CRITICAL
    assert "Connection refused" in result.message
    assert str(port) in result.message


# ---------------------------------------------------------------------------------------------------------
# check_http against a loopback aiohttp server


@pytest.fixture
async def http_base(aiohttp_server_factory: StartApp) -> str:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="healthy and happy")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/broken", broken)
    return await aiohttp_server_factory(app)


def http_command(base: str, path: str, *extra: str) -> list[str]:
    port = base.rpartition(":")[2]
    return ["check_http", "-H", "127.0.0.1", "-p", port, "-u", path, *extra]


async def test_check_http_ok_with_time_and_size_perfdata(env: CheckEnv, http_base: str) -> None:
    plugin("check_http")
    result = await run_check(exec_check(env, http_command(http_base, "/health", "-s", "happy")), timeout=5)
    assert result.status is Status.OK, result.message
    assert result.message.startswith("HTTP OK: HTTP/1.1 200 OK")
    metrics = {m.label: m for m in result.metrics}
    assert set(metrics) == {"time", "size"}
    assert metrics["time"].uom == "s"
    assert metrics["time"].value is not None and 0 <= metrics["time"].value < 1
    assert metrics["size"].uom == "B"
    assert metrics["size"].value is not None and metrics["size"].value >= len("healthy and happy")


async def test_check_http_missing_expected_text_is_critical(env: CheckEnv, http_base: str) -> None:
    plugin("check_http")
    result = await run_check(exec_check(env, http_command(http_base, "/health", "-s", "sad")), timeout=5)
    assert result.status is Status.CRITICAL
    assert "'sad' not found" in result.message


async def test_check_http_server_error_is_critical(env: CheckEnv, http_base: str) -> None:
    plugin("check_http")
    result = await run_check(exec_check(env, http_command(http_base, "/broken")), timeout=5)
    assert result.status is Status.CRITICAL
    assert "503" in result.message
    assert {m.label for m in result.metrics} == {"time", "size"}


# ---------------------------------------------------------------------------------------------------------
# Templates: {host} and {port} are filled from the target before the plugin runs


async def test_argv_templates_are_rendered_from_the_target(env: CheckEnv) -> None:
    plugin("check_tcp")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = Target("web", "web-1", f"127.0.0.1:{port}")
    raw = ExecConfig(command=["check_tcp", "-H", "{host}", "-p", "{port}"])
    rendered = render_model(raw, target.fields())
    assert rendered.command == ["check_tcp", "-H", "127.0.0.1", "-p", str(port)]
    assert raw.command == ["check_tcp", "-H", "{host}", "-p", "{port}"]  # the spec is shared, not mutated
    async with server:
        result = await run_check(ExecCheck(rendered, target, env=env), timeout=5)
    assert result.status is Status.OK, result.message
    assert f"127.0.0.1 port {port}" in result.message

    # the same spec rendered for a machine whose port is closed reaches that port
    closed = Target("web", "web-2", f"127.0.0.1:{free_port()}")
    result = await run_check(ExecCheck(render_model(raw, closed.fields()), closed, env=env), timeout=5)
    assert result.status is Status.CRITICAL
    assert closed.port in result.message


# ---------------------------------------------------------------------------------------------------------
# Plugins that misbehave


async def test_hanging_plugin_and_its_child_are_killed_at_the_timeout(env: CheckEnv, tmp_path: Path) -> None:
    pid_file, child_file = tmp_path / "plugin.pid", tmp_path / "child.pid"
    hang = script(
        tmp_path,
        "check_hang",
        f"echo $$ > {pid_file}\nsleep 300 &\necho $! > {child_file}\necho 'OK: about to hang'\nwait\n",
    )
    started = time.monotonic()
    result = await run_check(exec_check(env, [str(hang)]), timeout=1)
    elapsed = time.monotonic() - started
    assert result.status is Status.UNKNOWN
    assert "timed out after 1s" in result.message
    assert 0.9 < elapsed < 1.5
    pids = [await wait_for_pid(pid_file), await wait_for_pid(child_file)]
    try:
        survivors = await wait_gone(pids, timeout=1.0)
        assert survivors == [], f"still running after the timeout: {survivors} (plugin, child = {pids})"
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)


async def test_background_child_left_by_a_finished_plugin_is_killed(env: CheckEnv, tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    leaky = script(
        tmp_path,
        "check_leaky",
        f"sleep 300 >/dev/null 2>&1 &\necho $! > {child_file}\necho 'OK: done | n=1'\nexit 0\n",
    )
    result = await run_check(exec_check(env, [str(leaky)]), timeout=3)
    assert result.status is Status.OK
    assert result.message == "OK: done"
    child = await wait_for_pid(child_file)
    try:
        assert await wait_gone([child], timeout=1.0) == []
    finally:
        if alive(child):
            os.kill(child, 9)


async def test_flood_of_output_is_capped_and_memory_stays_flat(env: CheckEnv, tmp_path: Path) -> None:
    size = 8 << 20  # 8 MiB on one line, far above the 8 KiB cap
    flood = script(tmp_path, "check_flood", f"head -c {size} /dev/zero | tr '\\0' x\nexit 0\n")
    check = exec_check(env, [str(flood)])

    first = await run_check(check, timeout=10)  # warm-up: first-use allocations are not growth
    assert first.status is Status.OK
    assert first.message.startswith("xxxx")
    assert first.message.endswith("(output over 8192 bytes was cut)")
    assert len(first.message) < 8192 + 100

    peak = before = rss_kib()
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_kib())
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    results: list[CheckResult] = []
    try:
        for _ in range(5):
            results.append(await run_check(check, timeout=10))
    finally:
        sampling = False
        await sampler
    after = rss_kib()
    assert [r.status for r in results] == [Status.OK] * 5
    assert all(len(r.message) < 8192 + 100 and "was cut" in r.message for r in results)
    # 40 MiB went through the pipe; healerd kept at most a few MB of it at any time
    assert after - before < 4 * 1024, f"RSS grew {after - before} KiB over 5 runs"
    assert peak - before < 6 * 1024, f"RSS peaked {peak - before} KiB above the baseline"


async def test_output_cap_is_configurable(env: CheckEnv, tmp_path: Path) -> None:
    noisy = script(tmp_path, "check_noisy", "head -c 5000 /dev/zero | tr '\\0' y\nexit 1\n")
    result = await run_check(exec_check(env, [str(noisy)], output_cap=1000), timeout=5)
    assert result.status is Status.WARNING
    assert result.message == "y" * 1000 + " (output over 1000 bytes was cut)"


async def test_plugin_not_found_is_unknown_naming_it(env: CheckEnv) -> None:
    result = await run_check(exec_check(env, ["check_healerd_no_such_plugin", "-H", "x"]), timeout=5)
    assert result.status is Status.UNKNOWN
    assert "'check_healerd_no_such_plugin' not found" in result.message
    assert "/usr/lib/nagios/plugins" in result.message  # says where it looked


async def test_plugin_path_that_does_not_exist_is_unknown_naming_it(env: CheckEnv, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "check_gone"
    result = await run_check(exec_check(env, [str(missing)]), timeout=5)
    assert result.status is Status.UNKNOWN
    assert str(missing) in result.message
    assert "No such file or directory" in result.message


async def test_plugin_not_executable_is_unknown(env: CheckEnv, tmp_path: Path) -> None:
    path = script(tmp_path, "check_noexec", "echo OK\n")
    path.chmod(0o644)
    result = await run_check(exec_check(env, [str(path)]), timeout=5)
    assert result.status is Status.UNKNOWN
    assert str(path) in result.message and "Permission denied" in result.message


async def test_bare_name_is_found_in_check_paths_and_relative_path_in_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    script(folder, "check_local", 'echo "WARNING: local plugin ran with $1 | x=3c"\nexit 1\n')
    env = CheckEnv(check_paths=(folder,), base_dir=tmp_path)
    try:
        by_name = await run_check(exec_check(env, ["check_local", "arg1"]), timeout=5)
        by_relpath = await run_check(exec_check(env, ["plugins/check_local", "arg2"]), timeout=5)
    finally:
        await env.close()
    assert (by_name.status, by_name.message) == (Status.WARNING, "WARNING: local plugin ran with arg1")
    assert (by_relpath.status, by_relpath.message) == (Status.WARNING, "WARNING: local plugin ran with arg2")
    assert [(m.label, m.value, m.uom) for m in by_name.metrics] == [("x", 3.0, "c")]


async def test_exit_code_above_3_is_unknown_and_says_so(env: CheckEnv, tmp_path: Path) -> None:
    odd = script(tmp_path, "check_odd", "echo 'OK: all good'\nexit 4\n")
    result = await run_check(exec_check(env, [str(odd)]), timeout=5)
    assert result.status is Status.UNKNOWN
    assert result.message == "plugin exited 4 (not a Nagios status): OK: all good"


async def test_plugin_killed_by_a_signal_is_unknown_and_says_so(env: CheckEnv, tmp_path: Path) -> None:
    doomed = script(tmp_path, "check_doomed", "echo 'OK: famous last words'\nkill -9 $$\n")
    result = await run_check(exec_check(env, [str(doomed)]), timeout=5)
    assert result.status is Status.UNKNOWN
    assert result.message == "plugin killed by signal 9: OK: famous last words"


async def test_silent_plugin_message_gives_the_exit_code(env: CheckEnv, tmp_path: Path) -> None:
    quiet = script(tmp_path, "check_quiet", "echo 'only on stderr' >&2\nexit 2\n")
    result = await run_check(exec_check(env, [str(quiet)]), timeout=5)
    assert result.status is Status.CRITICAL
    assert result.message == "plugin exited 2 with no output"


async def test_configured_env_reaches_the_plugin(env: CheckEnv, tmp_path: Path) -> None:
    show = script(tmp_path, "check_env", 'echo "OK: token=$HEALERD_TEST_TOKEN lc=$LC_ALL"\n')
    result = await run_check(exec_check(env, [str(show)], env={"HEALERD_TEST_TOKEN": "s3cret"}), timeout=5)
    assert result.status is Status.OK
    assert result.message == "OK: token=s3cret lc=C"


async def test_a_plugin_printing_without_end_leaks_no_file_descriptor_over_1000_runs(env: CheckEnv) -> None:
    """`yes` never ends: every run is cut at its timeout; the pipe of each abandoned run must be closed."""
    check = exec_check(env, ["yes"])

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    await run_check(check, timeout=0.01)  # warm-up: the child watcher, the loop's self-pipe
    await asyncio.sleep(0.05)
    before = open_fds()
    for _ in range(1000):
        result = await run_check(check, timeout=0.01)
        assert result.status is Status.UNKNOWN
    await asyncio.sleep(0.2)
    assert open_fds() - before <= 2, f"{open_fds() - before} file descriptors more after 1000 runs"


# ---------------------------------------------------------------------------------------------------------
# what a plugin inherits: nothing of the daemon's


async def test_a_plugin_inherits_only_stdin_stdout_stderr_and_default_signals(env: CheckEnv, tmp_path: Path) -> None:
    """The daemon's sockets, database and pipes stay closed to a plugin, and it does not inherit the daemon's
    ignored SIGPIPE (a plugin writing to a closed pipe must die of it, as from a shell)."""
    pidfile = tmp_path / "pid"
    holder = script(tmp_path, "check_hold", f"echo $$ > {pidfile}\nexec sleep 5\n")
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)  # one more daemon socket
    async with listener:
        run = asyncio.ensure_future(run_check(exec_check(env, [str(holder)]), timeout=2))
        pid = await wait_for_pid(pidfile)
        await asyncio.sleep(0.1)  # let the shell exec sleep
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as f:  # noqa: ASYNC230 (procfs: no disk I/O)
            status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        result = await run
    assert fds == [0, 1, 2]
    assert int(status["SigIgn"], 16) & (1 << (13 - 1)) == 0  # SIGPIPE (13) not ignored
    assert int(status["SigBlk"], 16) == 0
    # the daemon side did hold more than stdio (the listener, the loop's own): those stayed out of the plugin
    assert len(os.listdir("/proc/self/fd")) > 4
    assert result.status is Status.UNKNOWN and "timed out" in result.message
    assert await wait_gone([pid], 2) == []
