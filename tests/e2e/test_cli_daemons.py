"""End to end: which daemon the command line talks to (-c CONFIG, the default config, --url), its exit codes,
a closed pipe, a mistyped command, empty lists, and silences of things that do not exist."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, free_port, require_binary

from .fleet import REPO
from .helpers import HEALERD, DaemonProcess, StartDaemon, http_check, make_config, run_cli, write_config

pytestmark = pytest.mark.e2e


def _cli_env(**extra: str) -> dict[str, str]:
    """The user's environment without a HEALERD_CONFIG of its own, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "HEALERD_CONFIG"}
    return {**env, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", **extra}


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`healerd ARGS` as a user runs it, from / (so no relative path finds anything by luck)."""
    return subprocess.run(
        [*HEALERD, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=_cli_env(**env),
        stdin=subprocess.DEVNULL,
        cwd="/",
    )


def _daemon(
    start_daemon: StartDaemon, tmp_path: Path, name: str, service: str, fleet: Fleet, token: str | None = None
) -> DaemonProcess:
    cfg = make_config(
        tmp_path,
        free_port(),
        [(f"{service}-{i}", m.address) for i, m in enumerate(fleet.machines, start=1)],
        [http_check(interval="200ms", fall=1, rise=1)],
        service=service,
        state_dir=tmp_path / f"state-{name}",
    )
    if token is not None:
        (tmp_path / f"{name}-token").write_text(token + "\n")
        cfg["daemon"]["api_token_file"] = str(tmp_path / f"{name}-token")
    return start_daemon(cfg, name=name)


def test_c_config_talks_to_the_daemon_of_that_config(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    """Two daemons on two ports: every command given -c B.yaml acts on B, never on A (the one on 9464's place)."""
    a = _daemon(start_daemon, tmp_path, "A", "alpha", fleet_factory(2))
    b = _daemon(start_daemon, tmp_path, "B", "beta", fleet_factory(2), token="s3cret-token-of-b")
    b_yaml = str(b.config_path)

    out = cli("status", "-c", b_yaml)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "beta" in out.stdout and "beta-1" in out.stdout and "beta-2" in out.stdout, out.stdout
    assert "alpha" not in out.stdout, out.stdout
    as_json = json.loads(cli("status", "-c", b_yaml, "--json").stdout)
    assert [s["name"] for s in as_json["services"]] == ["beta"], as_json

    # a change needs B's token: read from B's api_token_file
    out = cli("mode", "pause", "-c", b_yaml)
    assert out.returncode == 0, out.stdout + out.stderr
    assert b.json("/api/v1/mode")["paused"] is True
    assert a.json("/api/v1/mode")["paused"] is False

    out = cli("silence", "add", "--service", "beta", "--for", "10m", "--comment", "upgrade", "-c", b_yaml)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [s["service"] for s in b.json("/api/v1/silences")["silences"]] == ["beta"]
    assert a.json("/api/v1/silences")["silences"] == []

    out = cli("quarantine", "list", "-c", b_yaml)
    assert (out.returncode, out.stdout.strip()) == (0, "no machines in quarantine"), out.stdout + out.stderr

    # no -c: the default config ($HEALERD_CONFIG stands for /etc/healerd/healerd.yaml here)
    out = cli("status", HEALERD_CONFIG=b_yaml)
    assert out.returncode == 0 and "beta-1" in out.stdout and "alpha" not in out.stdout, out.stdout + out.stderr
    # --url still wins over the config's listen
    out = cli("status", "-c", b_yaml, "--url", a.url)
    assert out.returncode == 0 and "alpha-1" in out.stdout and "beta" not in out.stdout, out.stdout + out.stderr


def test_a_daemon_that_does_not_answer_exits_3_and_says_which_address_and_why(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "gone.yaml", make_config(tmp_path, port, [("web-1", "127.0.0.1:9")], []))
    out = cli("status", "-c", str(cfg))
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"cannot reach healerd at http://127.0.0.1:{port} (daemon.listen of {cfg})" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_a_config_that_cannot_be_read_exits_2_and_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    out = cli("incidents", "-c", str(missing))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"-c {missing}: cannot read the config file: No such file or directory" in out.stderr, out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("daemon:\n  listen: 127.0.0.1:99999\n")
    out = cli("status", "-c", str(bad))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{bad}: daemon.listen:" in out.stderr and "'99999' is not a port" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_the_daemon_of_a_tls_config_is_reached_over_https_trusting_its_certificate(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    openssl = require_binary("openssl")
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    args += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, *args],
        check=True,
        capture_output=True,
    )
    fleet: Fleet = fleet_factory(1)
    cfg = make_config(tmp_path, free_port(), [("web-1", fleet[0].address)], [http_check(interval="1s")])
    cfg["daemon"].update(tls_cert_file=str(cert), tls_key_file=str(key))
    daemon = start_daemon(cfg, wait="none")
    out = None
    for _ in range(100):  # until it listens (its plain-HTTP /readyz is not answered)
        out = cli("status", "-c", str(daemon.config_path))
        if out.returncode != 3:
            break
    assert out is not None and out.returncode == 0, out
    assert "web-1" in out.stdout, out.stdout


def test_a_mistyped_command_suggests_the_closest() -> None:
    out = cli("stauts")
    assert out.returncode == 2, out
    assert "did you mean 'status'?" in out.stderr, out.stderr
    out = cli("quarantine", "lst")
    assert out.returncode == 2, out
    assert "did you mean 'list'?" in out.stderr, out.stderr
    out = cli("silence", "ad", "--service", "web")
    assert out.returncode == 2 and "did you mean 'add'?" in out.stderr, out.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path, start_daemon: StartDaemon) -> None:
    """`healerd status --json | head -n 2` on a fleet whose status is far more than a pipe holds."""
    machines = [(f"web-{i:03}", "127.0.0.1:9") for i in range(300)]
    cfg = make_config(tmp_path, free_port(), machines, [http_check(interval="60s", timeout="1s")])
    daemon = start_daemon(cfg, wait="listening")  # the first round of 300 checks spreads over the interval
    command = " ".join([*HEALERD, "status", "--json", "--url", daemon.url])
    out = subprocess.run(
        ["bash", "-c", f'{command} | head -n 2; echo "healerd exit ${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        timeout=30,
        env=_cli_env(),
    )
    assert len(out.stdout.splitlines()) == 2, out.stdout[:500]
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    assert out.stderr.strip() == "healerd exit 141", out.stderr
    # a refusal names at most 20 of the known ones, and how many there are
    out = cli("silence", "add", "--machine", "nosuch", "--url", daemon.url)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "known machines (300, the first 20): web-000, web-001," in out.stderr, out.stderr
    assert "web-019;" in out.stderr and "web-020" not in out.stderr, out.stderr


def test_empty_lists_say_what_is_empty(tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon) -> None:
    daemon = _daemon(start_daemon, tmp_path, "A", "web", fleet_factory(1))
    expected = {
        ("quarantine", "list"): "no machines in quarantine",
        ("incidents",): "no incidents",
        ("silence", "list"): "no silences running or to come",
    }
    for args, line in expected.items():
        out = run_cli(*args, "--url", daemon.url)
        assert (out.returncode, out.stdout.strip()) == (0, line), (args, out.stdout, out.stderr)
    # healerd check of the demo config before its first run: checks configured, no machine launched yet
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in ("config.example.yaml", "playbooks", "checks"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, demo / name)
        else:
            shutil.copy(source, demo / name)
    out = run_cli("check", "-c", str(demo / "config.example.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "no check ran: no check configured, or no machine to run one on yet"
    assert "no checks configured" not in out.stdout


def test_a_silence_of_a_machine_or_service_that_does_not_exist_is_refused(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    daemon = _daemon(start_daemon, tmp_path, "A", "web", fleet_factory(3))
    out = run_cli("silence", "add", "--machine", "nosuch", "--for", "10m", "--url", daemon.url)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no machine 'nosuch'" in out.stderr, out.stderr
    assert "known machines (3): web-1, web-2, web-3" in out.stderr and "--force" in out.stderr, out.stderr
    out = run_cli("silence", "add", "--service", "wbe", "--for", "10m", "--url", daemon.url)
    assert out.returncode == 2 and "no service named 'wbe'; known services (1): web" in out.stderr, out.stderr
    out = run_cli("silence", "add", "--service", "web", "--machine", "web-9", "--url", daemon.url)
    assert out.returncode == 2 and "no machine 'web-9' in service web" in out.stderr, out.stderr
    assert daemon.json("/api/v1/silences")["silences"] == [], "nothing was silenced"

    # a machine about to be launched: --force
    out = run_cli("silence", "add", "--machine", "web-4", "--for", "10m", "--force", "--url", daemon.url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [s["machine"] for s in daemon.json("/api/v1/silences")["silences"]] == ["web-4"]
    out = run_cli("silence", "add", "--machine", "web-2", "--for", "10m", "--url", daemon.url)
    assert out.returncode == 0, out.stdout + out.stderr
