"""The operator's controls (healerd.remediation.controls): mode precedence, pause, silences and storm cooldowns, all
surviving a restart through the store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from healerd.config import Config, Mode, load_config
from healerd.remediation.controls import Controls
from healerd.store import Store

CONFIG = """
daemon:
  state_dir: ./state
  mode: {daemon_mode}
providers:
  lab: {{kind: static}}
services:
  web:
    provider: lab
    machines: [{{id: web-1, address: "127.0.0.1:1"}}, {{id: web-2, address: "127.0.0.1:2"}}]
    remediation: {{mode: {service_mode}}}
  api:
    provider: lab
    machines: [{{id: api-1, address: "127.0.0.1:3"}}]
"""
NOW = 1_700_000_000.0


def fixed(cfg: Config) -> Callable[[], Config]:
    """The config in force, as the daemon gives it to its parts."""
    return lambda: cfg


def config(tmp_path: Path, daemon_mode: str = "auto", service_mode: str = "dry-run") -> Config:
    path = tmp_path / "healerd.yaml"
    path.write_text(CONFIG.format(daemon_mode=daemon_mode, service_mode=service_mode))
    return load_config(path)


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def restarted(controls: Controls) -> Controls:
    again = Controls(controls._config, controls.store, cli_mode=controls.cli_mode, wake=lambda: None)
    await again.load()
    return again


async def test_mode_precedence_from_runtime_service_down_to_the_daemon_config(tmp_path: Path, store: Store) -> None:
    controls = Controls(fixed(config(tmp_path, "observe")), store, cli_mode=None, wake=lambda: None)
    await controls.load()
    assert controls.mode_for("web") is Mode.DRY_RUN  # the service's remediation.mode over daemon.mode
    assert controls.mode_for("api") is Mode.OBSERVE  # daemon.mode

    controls.cli_mode = Mode.AUTO  # `healerd run --mode auto`
    assert (controls.mode_for("web"), controls.mode_for("api")) == (Mode.AUTO, Mode.AUTO)
    await controls.set_mode(Mode.OBSERVE)  # POST /api/v1/mode
    assert (controls.mode_for("web"), controls.mode_for("api")) == (Mode.OBSERVE, Mode.OBSERVE)
    await controls.set_mode(Mode.DRY_RUN, "api")  # POST /api/v1/mode with a service
    assert (controls.mode_for("web"), controls.mode_for("api")) == (Mode.OBSERVE, Mode.DRY_RUN)
    assert controls.global_mode is Mode.OBSERVE


async def test_a_global_switch_clears_per_service_modes_and_back_to_config(tmp_path: Path, store: Store) -> None:
    controls = Controls(fixed(config(tmp_path)), store, cli_mode=None, wake=lambda: None)
    await controls.set_mode(Mode.OBSERVE, "api")
    await controls.set_mode(Mode.AUTO)
    assert controls.service_modes == {}
    await controls.set_mode(None)  # back to what the config says
    assert (controls.mode_for("web"), controls.mode_for("api")) == (Mode.DRY_RUN, Mode.AUTO)
    await controls.set_mode(Mode.OBSERVE, "api")
    await controls.set_mode(None, "api")
    assert controls.mode_for("api") is Mode.AUTO


async def test_modes_and_pause_survive_a_restart_and_each_switch_wakes_the_engine(tmp_path: Path, store: Store) -> None:
    wakes = Wakes()
    controls = Controls(fixed(config(tmp_path)), store, cli_mode=None, wake=wakes)
    await controls.set_mode(Mode.OBSERVE)
    await controls.set_mode(Mode.AUTO, "web")
    await controls.set_paused(True)
    assert wakes.count == 3

    again = await restarted(controls)
    assert (again.runtime_mode, again.service_modes, again.paused) == (Mode.OBSERVE, {"web": Mode.AUTO}, True)
    await again.set_paused(False)
    assert (await restarted(again)).paused is False


async def test_silences_cover_their_service_or_machine_until_they_end(tmp_path: Path, store: Store) -> None:
    wakes = Wakes()
    controls = Controls(fixed(config(tmp_path)), store, cli_mode=None, wake=wakes)
    machine = await controls.add_silence("web", "web-1", 3600, "kernel update")
    await controls.add_silence("api", None, 3600, "migration")
    now = machine["starts_at"] + 1

    assert await controls.silenced("web", "web-1", now)
    assert not await controls.silenced("web", "web-2", now)
    assert not await controls.silenced("web", "", now)  # a machine's silence does not cover its service
    assert await controls.silenced("api", "api-1", now) and await controls.silenced("api", "", now)
    assert not await controls.silenced("web", "web-1", machine["ends_at"])  # ended

    assert await controls.delete_silence(machine["id"])
    assert not await controls.silenced("web", "web-1", now)  # the same `now`: not answered from before
    assert wakes.count == 1
    assert not await controls.delete_silence(machine["id"])
    assert [s["comment"] for s in await controls.silences(now)] == ["migration"]


async def test_a_storm_cooldown_only_extends_and_is_written_when_it_moves(tmp_path: Path, store: Store) -> None:
    controls = Controls(fixed(config(tmp_path)), store, cli_mode=None, wake=lambda: None)
    await controls.storm("web", NOW + 300)
    await controls.storm("web", NOW + 300.5)  # a tick later: in memory, not worth a write
    await controls.storm("web", NOW + 100)  # never shortened
    assert controls.storm_until == {"web": NOW + 300.5}
    assert (await restarted(controls)).storm_until == {"web": NOW + 300}
    await controls.storm("web", NOW + 302)
    assert (await restarted(controls)).storm_until == {"web": NOW + 302}
