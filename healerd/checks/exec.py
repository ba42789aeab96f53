"""`exec` check: runs any Nagios-protocol plugin unmodified (argv, no shell) and reads its verdict."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import Field, field_validator

from ..results import CheckResult
from ..targets import Target
from . import _spawn
from .base import Check, CheckEnv, CheckOptions
from .nagios import parse_output, status_from_exit

#: Where distributions install the standard plugins (Debian: monitoring-plugins-*).
PLUGIN_DIRS = (
    Path("/usr/lib/nagios/plugins"),
    Path("/usr/lib/monitoring-plugins"),
    Path("/usr/local/nagios/libexec"),
)
OUTPUT_CAP = 8192


class ExecConfig(CheckOptions):
    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    output_cap: int = Field(default=OUTPUT_CAP, ge=256, le=1 << 20)

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v or not v[0]:
            raise ValueError("command needs at least the plugin name, e.g. [check_tcp, -H, '{host}']")
        return v


def resolve_plugin(name: str, env: CheckEnv) -> str | None:
    """A bare name is searched in check_paths, the plugin folders and PATH; a relative path is taken
    against the config file's folder."""
    if "/" in name:
        path = Path(name)
        return str(path if path.is_absolute() else env.base_dir / path)
    for folder in (*env.check_paths, *PLUGIN_DIRS):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def plugin_problem(name: str, env: CheckEnv) -> str | None:
    """Why the plugin `name` cannot run (missing, not a file, not executable), with the fix; None if it can."""
    if "{" in name:
        return None  # templated per machine: known only at run time
    if "/" in name:
        path = Path(name) if Path(name).is_absolute() else env.base_dir / name
        if not path.exists():
            return f"plugin {path} does not exist; fix the path or install the plugin"
        if not path.is_file():
            return f"plugin {path} is not a file"
        if not os.access(path, os.X_OK):
            return f"found {path} but it is not executable: chmod +x {path}"
        return None
    if resolve_plugin(name, env) is not None:
        return None
    for folder in (*env.check_paths, *PLUGIN_DIRS):
        candidate = folder / name
        if candidate.is_file():
            return f"found {candidate} but it is not executable: chmod +x {candidate}"
    return (
        f"plugin {name!r} not found in check_paths ({', '.join(map(str, env.check_paths)) or 'none'}), "
        f"{', '.join(map(str, PLUGIN_DIRS))} or PATH; install it (Debian: apt-get install monitoring-plugins) "
        "or give its full path"
    )


class ExecCheck(Check[ExecConfig]):
    kind = "exec"
    Config = ExecConfig

    @classmethod
    def preflight(cls, options: CheckOptions, env: CheckEnv) -> list[tuple[tuple[str | int, ...], str]]:
        assert isinstance(options, ExecConfig)
        problem = plugin_problem(options.command[0], env)
        return [(("command", 0), problem)] if problem else []

    def __init__(self, config: ExecConfig, target: Target, *, env: CheckEnv) -> None:
        super().__init__(config, target, env=env)
        # Prepared once per (check, machine), not per run: the environment and where the plugin is.
        self._env = {**os.environ, **config.env, "LC_ALL": "C", "LC_NUMERIC": "C"}
        self._program: str | None = None

    async def run(self) -> CheckResult:
        cfg = self.config
        program = self._program or resolve_plugin(cfg.command[0], self.env)
        if program is None:
            return CheckResult.unknown(
                f"plugin {cfg.command[0]!r} not found in check_paths, {', '.join(map(str, PLUGIN_DIRS))} or PATH"
            )
        async with self.env.subprocess_slots:
            try:
                outcome = await _spawn.spawn(program, [program, *cfg.command[1:]], self._env, cfg.output_cap)
            except OSError as exc:
                self._program = None  # moved or removed: look for it again next time
                return CheckResult.unknown(f"cannot start {program}: {exc.strerror or exc}")
        self._program = program
        code = outcome.code
        parsed = parse_output(outcome.output.decode("utf-8", "replace"))
        status = status_from_exit(code)
        message = parsed.message or f"plugin exited {code} with no output"
        if code < 0:
            message = f"plugin killed by signal {-code}: {message}"
        elif code > 3:
            message = f"plugin exited {code} (not a Nagios status): {message}"
        if outcome.truncated:
            message += f" (output over {cfg.output_cap} bytes was cut)"
        return CheckResult(status, message, parsed.metrics)
