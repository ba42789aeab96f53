"""The actions that repair a sick machine and keep it (the escalation ladder's lower rungs): restart or reboot
it through its provider, or run the site's own tooling (`command`: e.g. `ssh {address} systemctl restart app`).
A repair is checked by `checks.await_healthy` with `target: machine`."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from pydantic import Field, field_validator

from ..checks import _spawn
from ..words import template_problems
from .actions import Action, NoParams, StepContext, StepFailed

#: what a `command` step keeps of its output (the tail): enough for the timeline, not a log
OUTPUT_KEPT = 4000
#: what is read of it at most (the rest is not kept in memory)
OUTPUT_READ = 1 << 20


class MachineRestart(Action):
    kind = "machine.restart"
    verbs = frozenset({"restart"})
    description = "restart what the sick machine runs (its provider's restart: local restarts the process)"

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        await ctx.repair.restart(ctx.service, ctx.incident.machine, "restart")
        return {"restarted": ctx.incident.machine}


class MachineReboot(Action):
    kind = "machine.reboot"
    verbs = frozenset({"reboot"})
    default_timeout = 600.0
    description = "reboot the sick machine, keeping it (its provider's reboot: AWS RebootInstances)"

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        await ctx.repair.restart(ctx.service, ctx.incident.machine, "reboot")
        return {"rebooted": ctx.incident.machine}


class CommandParams(NoParams):
    #: the executable and its arguments; {address}, {host}, {port}, {id} and {service} name the sick machine
    run: list[str] = Field(min_length=1)

    @field_validator("run")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        problems = [p for arg in v for p in template_problems(arg)]
        if problems:
            raise ValueError("; ".join(problems))
        return v


class RunCommand(Action):
    kind = "command"
    Params = CommandParams
    description = "run the site's own tooling on the sick machine (JSON on stdin, HEALERD_* variables; exit 0 = done)"

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        params = ctx.step.params
        assert isinstance(params, CommandParams)
        machine = await ctx.fleet.machine(ctx.incident.service, ctx.incident.machine)
        fields = machine.target.fields()
        argv = [arg.format_map(fields) for arg in params.run]
        request = {
            "machine": {
                "service": machine.service,
                "id": machine.id,
                "address": machine.address,
                "zone": machine.attributes.get("zone"),
                "attributes": machine.attributes,
            },
            "incident": {"id": ctx.incident.id, "summary": ctx.incident.summary, "playbook": ctx.incident.playbook},
            "step": {"action": self.kind, "run": argv, "timeout": ctx.step.timeout},
        }
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HEALERD_SERVICE": machine.service,
            "HEALERD_MACHINE_ID": machine.id,
            "HEALERD_MACHINE_ADDRESS": machine.address,
            "HEALERD_MACHINE_HOST": fields["host"],
            "HEALERD_MACHINE_PORT": fields["port"],
            "HEALERD_INCIDENT": ctx.incident.id,
        }
        code, output = await run_tool(argv, json.dumps(request).encode(), env)
        tail = output[-OUTPUT_KEPT:]
        if code != 0:
            raise StepFailed(f"{argv[0]} exited {code}: {tail.strip()[-500:] or '(no output)'}")
        return {"command": argv[0], "output": tail}


async def run_tool(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[int, str]:
    """Run a tool in its own process group, stdin given, stdout and stderr together; cancelling the step (its
    timeout) kills the whole group. Returns the exit status and the output (its first OUTPUT_READ bytes).

    The exec checks' spawn path: the tool gets no descriptor of the daemon's but its
    three pipes. uvloop's subprocesses also hand the child copies of their stdio sockets above stderr, so a
    server the tool starts (`nginx`, `service app start`) would keep the output open and the step would
    wait for it until its timeout, however carefully the tool redirects the server's own stdio. What is left of
    the tool's process group when it exits is killed: a server it leaves running must be in its own session, as
    a daemon is."""
    program = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    try:
        outcome = await _spawn.spawn(program, argv, env, OUTPUT_READ, stdin=stdin, merge_stderr=True)
    except OSError as exc:
        raise StepFailed(f"cannot run {argv[0]}: {exc.strerror or exc}", terminal=True) from None
    return outcome.code, outcome.output.decode(errors="replace")
