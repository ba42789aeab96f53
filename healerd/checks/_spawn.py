"""Run a plugin at the cost of the plugin: `posix_spawn` (glibc: clone with CLONE_VM|CLONE_VFORK, no copy of
the daemon's page tables), its stdout read from a non-blocking pipe watched by the event loop directly, its
exit looked at when its output ends (and through a pidfd if it is still running then): no fork of a large
process, no subprocess transports, no child watcher.

Guarantees of every run: no shell, no descriptor of the daemon's but stdin and stderr on /dev/null (or on
pipes of their own when the caller gives input or wants stderr) and stdout on the pipe, default signal
dispositions and an empty signal mask, its own session and process group (killed whole when the plugin exits
or the run is abandoned), at most `cap` bytes of output kept in memory, and the process always reaped, also
when the awaiting task is cancelled (a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

#: pidfds (Linux 5.3) and posix_spawn's setsid are what make this path possible; elsewhere asyncio's
#: subprocess support is used instead (exec.py).
AVAILABLE = all(hasattr(os, name) for name in ("pidfd_open", "posix_spawn", "POSIX_SPAWN_DUP2", "waitid"))
_READ = 65536
#: how long the portable path reads on once the plugin has exited (what it started may hold its pipe)
EOF_GRACE = 0.5


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int  # as subprocess' returncode: negative for a signal
    output: bytes
    truncated: bool
    errors: bytes = b""  # stderr (its first `errors_cap` bytes), when asked for


_devnull: int | None = None


def _null() -> int:
    global _devnull
    if _devnull is None:
        _devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    return _devnull


async def spawn(
    program: str,
    argv: list[str],
    env: Mapping[str, str],
    cap: int,
    *,
    stdin: bytes | None = None,
    errors: bytearray | None = None,
    errors_cap: int = 0,
    grace: float = 0.0,
    merge_stderr: bool = False,
) -> Outcome:
    """Run `program` with `argv` (argv[0] included) and `env`; read its stdout to EOF and wait for its exit.

    `stdin`: bytes written to its standard input (then closed); `errors`: its stderr is read into this buffer, up
    to `errors_cap` bytes (the caller keeps what was said also when the run is abandoned); `grace` > 0: an
    abandoned run's process group gets SIGTERM and that long to go before SIGKILL; `merge_stderr` (without
    `errors`): its stderr goes to the stdout pipe, one stream in the order it was written. Raises OSError when it
    cannot be started (missing, not executable)."""
    if not AVAILABLE:
        return await _spawn_portable(
            program,
            argv,
            env,
            cap,
            stdin=stdin,
            errors=errors,
            errors_cap=errors_cap,
            merge_stderr=merge_stderr,
            grace=grace,
        )
    if stdin is None and errors is None and not merge_stderr:
        pid, rfd = _start(program, argv, env)  # the checks' path: nothing more to set up
        return await _Run(asyncio.get_running_loop(), pid, rfd=rfd, cap=cap, grace=grace).result()
    pid, rfd, wfd, efd = _start_piped(
        program, argv, env, with_stdin=stdin is not None, with_stderr=errors is not None, merge=merge_stderr
    )
    run = _Run(asyncio.get_running_loop(), pid, rfd=rfd, cap=cap, grace=grace)
    run.with_pipes(wfd, stdin or b"", efd, errors if errors is not None else bytearray(), errors_cap)
    return await run.result()


#: How often the daemon's descriptors are re-sealed (see `seal`).
SEAL_EVERY = 60.0
_sealed_at = -SEAL_EVERY


def seal() -> int:
    """Mark every descriptor above stderr close-on-exec; returns how many were not. posix_spawn, unlike
    subprocess' close_fds, closes nothing: what the daemon was started with (a shell's or a supervisor's
    descriptors) or a library opened without O_CLOEXEC would reach every plugin. Python's own descriptors
    are close-on-exec already, so after the first pass this finds nothing; it runs again every SEAL_EVERY
    seconds for whatever appeared since."""
    global _sealed_at
    _sealed_at = time.monotonic()
    sealed = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the one listdir used is gone already
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
                    sealed += 1
    return sealed


def _start(program: str, argv: list[str], env: Mapping[str, str]) -> tuple[int, int]:
    """The plugin's pid and the read end of its stdout (the only writer is the plugin); its stdin and stderr are
    /dev/null."""
    pid, rfd, _, _ = _start_piped(program, argv, env, with_stdin=False, with_stderr=False)
    return pid, rfd


def _start_piped(
    program: str,
    argv: list[str],
    env: Mapping[str, str],
    *,
    with_stdin: bool,
    with_stderr: bool,
    merge: bool = False,
) -> tuple[int, int, int, int]:
    """Start the plugin in its own process group (a timeout kills it and its children), with a pipe from its
    stdout and, when asked for, to its stdin and from its stderr (else /dev/null; `merge`: its stderr into the
    stdout pipe): (pid, stdout reader, stdin writer, stderr reader), -1 for a pipe not asked for. Our ends are
    non-blocking; the plugin's are not (O_NONBLOCK on its stdout would break it)."""
    if time.monotonic() - _sealed_at >= SEAL_EVERY:
        seal()
    null = _null()
    ours: list[int] = []  # closed on failure
    theirs: list[int] = []  # closed once the plugin has its copies
    try:
        rfd, out_w = os.pipe2(os.O_CLOEXEC)
        ours.append(rfd)
        theirs.append(out_w)
        in_r, wfd = os.pipe2(os.O_CLOEXEC) if with_stdin else (null, -1)
        if with_stdin:
            ours.append(wfd)
            theirs.append(in_r)
        efd, err_w = os.pipe2(os.O_CLOEXEC) if with_stderr else (-1, out_w if merge else null)
        if with_stderr:
            ours.append(efd)
            theirs.append(err_w)
        for fd in ours:
            os.set_blocking(fd, False)
        pid = os.posix_spawn(
            program,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, in_r, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
            setsid=True,
            # as subprocess' restore_signals: the daemon ignores SIGPIPE, a plugin must not inherit that
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            setsigmask=(),
        )
    except BaseException:
        for fd in ours + theirs:
            os.close(fd)
        raise
    for fd in theirs:
        os.close(fd)
    return pid, rfd, wfd, efd


class _Run:
    """One running plugin: a watcher on its stdout (and, when asked for, its stdin and stderr) and a future, no
    task of its own. Its exit is looked at when its output ends (a plugin's usual end: the two come together);
    only if it is still running then, or the run is abandoned, is a pidfd watched until it exits."""

    __slots__ = (
        "cap",
        "code",
        "done",
        "efd",
        "errors",
        "errors_cap",
        "grace",
        "kept",
        "loop",
        "pending",
        "pid",
        "pidfd",
        "rfd",
        "truncated",
        "wfd",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, pid: int, *, rfd: int, cap: int, grace: float = 0.0) -> None:
        self.loop = loop
        self.pid, self.rfd, self.cap, self.grace = pid, rfd, cap, grace
        self.pidfd = self.wfd = self.efd = -1
        self.kept = bytearray()
        self.errors = bytearray()
        self.errors_cap = 0
        self.pending = b""
        self.truncated = False
        self.code: int | None = None
        self.done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(rfd, self._readable)

    def with_pipes(self, wfd: int, data: bytes, efd: int, errors: bytearray, errors_cap: int) -> None:
        """Write `data` to the plugin's stdin (then close it) and keep its stderr in `errors`."""
        self.efd, self.errors, self.errors_cap = efd, errors, errors_cap
        if efd >= 0:
            self.loop.add_reader(efd, self._errors_readable)
        if wfd >= 0:
            self.wfd, self.pending = wfd, data
            self._writable()

    async def result(self) -> Outcome:
        try:
            await self.done
        finally:
            self._finish()
        assert self.code is not None
        return Outcome(self.code, bytes(self.kept), self.truncated, bytes(self.errors))

    def _readable(self) -> None:
        eof, cut = _drain(self.rfd, self.kept, self.cap)
        self.truncated = self.truncated or cut  # kept draining (the plugin must not block on a full pipe)
        if eof:
            self._close_pipe()
            self._output_ended()

    def _errors_readable(self) -> None:
        eof, _ = _drain(self.efd, self.errors, self.errors_cap)
        if eof:
            self.loop.remove_reader(self.efd)
            os.close(self.efd)
            self.efd = -1
            self._output_ended()

    def _writable(self) -> None:
        while self.pending:
            try:
                n = os.write(self.wfd, self.pending[:_READ])
            except BlockingIOError:
                self.loop.add_writer(self.wfd, self._writable)
                return
            except InterruptedError:
                continue
            except OSError:  # it closed its stdin (or exited) without reading all of it: its business
                break
            self.pending = self.pending[n:]
        self._close_stdin()

    def _close_stdin(self) -> None:
        if self.wfd >= 0:
            self.loop.remove_writer(self.wfd)
            os.close(self.wfd)
            self.wfd = -1
            self.pending = b""

    def _output_ended(self) -> None:
        if self.rfd >= 0 or self.efd >= 0:
            return  # the other pipe is still open
        if not self._exited_now():
            if self.pidfd < 0:
                self._watch_exit()
        elif not self.done.done():
            self.done.set_result(None)

    def _exited_now(self) -> bool:
        """Reap the plugin if it has exited. Until reaped it is a zombie whose pid (and so its process group
        id) cannot be reused: what is left of its group (background children) is killed first."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
            self.code = 255  # reaped by someone else (a waitpid(-1) elsewhere): the status is lost
            return True
        if info is None:
            return False
        kill_group(self.pid)
        self.code = _reap(self.pid)
        return True

    def _watch_exit(self) -> None:
        self.pidfd = os.pidfd_open(self.pid)  # our unreaped child: the pid cannot have been reused
        self.loop.add_reader(self.pidfd, self._pidfd_readable)

    def _pidfd_readable(self) -> None:
        if not self._exited_now():
            return
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        if self.rfd < 0 and self.efd < 0 and not self.done.done():
            self.done.set_result(None)

    def _close_pipe(self) -> None:
        if self.rfd >= 0:
            self.loop.remove_reader(self.rfd)
            os.close(self.rfd)
            self.rfd = -1

    def _finish(self) -> None:
        """After a normal end nothing is left; after a cancellation (the run's timeout) kill the group and watch
        the pidfd to reap the plugin when it is gone. With a `grace`, the group gets SIGTERM first and its pipes
        are drained until SIGKILL `grace` seconds later (a plugin's last words must not kill it with SIGPIPE)."""
        if self.code is None and self.grace > 0:
            self._close_stdin()
            kill_group(self.pid, signal.SIGTERM)
            self.loop.call_later(self.grace, self._kill_unreaped)
            if self.pidfd < 0 and not self._exited_now():
                self._watch_exit()
            return
        self._close_pipes()
        if self.code is None:
            kill_group(self.pid)
            if self.pidfd < 0 and not self._exited_now():
                self._watch_exit()

    def _close_pipes(self) -> None:
        self._close_pipe()
        self._close_stdin()
        if self.efd >= 0:
            self.loop.remove_reader(self.efd)
            os.close(self.efd)
            self.efd = -1

    def _kill_unreaped(self) -> None:
        # pipes a process outside the group may still hold are let go; a leader not reaped yet is still ours
        self._close_pipes()
        if self.code is None:
            kill_group(self.pid)


def _drain(fd: int, into: bytearray, cap: int) -> tuple[bool, bool]:
    """Read what `fd` holds now into `into`, keeping at most `cap` bytes: (end of file, something was cut)."""
    cut = False
    while True:
        try:
            chunk = os.read(fd, _READ)
        except BlockingIOError:
            return False, cut
        except InterruptedError:
            continue
        if not chunk:
            return True, cut
        room = cap - len(into)
        if room > 0:
            into += chunk[:room]
        if len(chunk) > room:
            cut = True


def _reap(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)  # waitid said it exited: this does not block
    except ChildProcessError:  # reaped by someone else (a waitpid(-1) elsewhere): the status is lost
        return 255
    return os.waitstatus_to_exitcode(status)


def kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _spawn_portable(
    program: str,
    argv: list[str],
    env: Mapping[str, str],
    cap: int,
    *,
    stdin: bytes | None,
    errors: bytearray | None,
    errors_cap: int,
    merge_stderr: bool,
    grace: float,
) -> Outcome:
    """Where there are no pidfds: asyncio's subprocess support, with the same guarantees (its own process
    group, killed with what it left when the run ends or is abandoned; output read to `cap`)."""
    pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    proc = await asyncio.create_subprocess_exec(
        program,
        *argv[1:],
        stdin=null if stdin is None else pipe,
        stdout=pipe,
        stderr=pipe if errors is not None else asyncio.subprocess.STDOUT if merge_stderr else null,
        env=dict(env),
        start_new_session=True,
    )
    output, cut = bytearray(), [False]
    said = errors if errors is not None else bytearray()
    reads = [_read_into(proc.stdout, output, cap, cut)]
    if errors is not None:
        reads.append(_read_into(proc.stderr, said, errors_cap, [False]))
    reading = asyncio.gather(*reads)
    try:
        if stdin is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):  # (BrokenPipeError, ConnectionResetError: it read no stdin)
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()
        code = await proc.wait()
        # its output ends with it, unless something it started holds the pipe: that is not waited for
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EOF_GRACE):
                await asyncio.shield(reading)
    finally:
        if proc.returncode is None and grace > 0:  # abandoned: SIGTERM first, and `grace` to go
            kill_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError, ProcessLookupError, ChildProcessError):
                async with asyncio.timeout(grace):
                    await asyncio.shield(proc.wait())
        reading.cancel()
        if proc.returncode is None or _group_alive(proc.pid):
            kill_group(proc.pid)
        # A run abandoned mid-read (a plugin flooding output until its timeout) leaves its pipes paused
        # with data in them: they would never see EOF and their descriptors would leak. Close them.
        _close_pipes(proc)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                await asyncio.shield(proc.wait())
    return Outcome(code, bytes(output), cut[0], bytes(said) if errors is not None else b"")


async def _read_into(stream: asyncio.StreamReader | None, into: bytearray, cap: int, cut: list[bool]) -> None:
    """Read a stream to EOF into `into`, keeping at most `cap` bytes (memory stays flat however much the plugin
    prints; `cut[0]` says whether some was dropped). What was read stays when the read is cancelled."""
    assert stream is not None
    while True:
        chunk = await stream.read(_READ)
        if not chunk:
            return
        room = cap - len(into)
        if room > 0:
            into += chunk[:room]
        if len(chunk) > room:
            cut[0] = True


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    transport = getattr(proc, "_transport", None)  # asyncio offers no public way to close a process' pipes
    if transport is not None:
        for fd in (1, 2):
            pipe = transport.get_pipe_transport(fd)
            if pipe is not None:
                pipe.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
