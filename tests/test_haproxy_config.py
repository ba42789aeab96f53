"""`healerd validate` on a `haproxy` rotation: what the runtime would choke on, or what would let a value run
a second command through HAProxy's runtime API, is refused with the key, the value and the fix; a relative
socket path is taken from the config file's folder, as every path of the config."""

from __future__ import annotations

from pathlib import Path

from e2e.helpers import run_cli

from healerd.config import load_config

#: rotation options -> the words healerd must say about them (the line names the service's rotation key)
BAD = {
    "inject": ({"server_options": "check; disable frontend fe"}, "server_options", "';'"),
    "newline": ({"server_options": "check\ndisable frontend fe"}, "server_options", "'\\n'"),
    "no-port": ({"socket": "127.0.0.1:"}, "socket", "'127.0.0.1:': the port is missing after ':'"),
    "big-port": ({"socket": "127.0.0.1:99999"}, "socket", "the port '99999' is not a port from 1 to 65535"),
    "word-port": ({"socket": "haproxy:stats"}, "socket", "the port 'stats' is not a port from 1 to 65535"),
    "bad-host": ({"socket": "bad host!:9999"}, "socket", "the host 'bad host!' is not an IP address or a host name"),
    "zero-timeout": ({"timeout": "0s"}, "timeout", "got 0s: it must be more than 0s"),
    "long-path": ({"socket": "/run/" + "x" * 120 + ".sock"}, "socket", "a Unix socket path can be at most 107"),
}


def service(name: str, options: dict[str, str], port: int) -> str:
    rotation = {"kind": "haproxy", "socket": "/run/haproxy/admin.sock", "backend": "web", **options}
    inline = ", ".join(f"{k}: {_yaml(v)}" for k, v in rotation.items())
    return f"""  {name}:
    provider: lab
    rotation: {{{inline}}}
    machines: [{{id: {name}-1, address: "127.0.0.1:{port}"}}]
    checks: [{{name: health, kind: tcp, address: "{{address}}", interval: 5s, timeout: 1s}}]
"""


def _yaml(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') + '"'


def config(tmp_path: Path, services: dict[str, dict[str, str]]) -> Path:
    path = tmp_path / "healerd.yaml"
    body = "".join(service(name, options, 20000 + i) for i, (name, options) in enumerate(services.items()))
    path.write_text(
        "daemon: {listen: 127.0.0.1:19464, state_dir: ./state, check_paths: [], playbook_paths: []}\n"
        f"providers: {{lab: {{kind: static}}}}\nservices:\n{body}"
    )
    return path


def test_validate_refuses_what_would_inject_a_command_or_fail_at_run_naming_key_value_and_fix(tmp_path: Path) -> None:
    path = config(tmp_path, {name: options for name, (options, _, _) in BAD.items()})
    out = run_cli("validate", "-c", str(path))
    assert out.returncode == 2, out
    said = out.stdout + out.stderr
    assert f"{len(BAD)} problems found" in said, said
    lines = said.splitlines()
    for name, (_, key, words) in BAD.items():
        (line,) = [ln for ln in lines if f"services.{name}.rotation.{key}:" in ln]
        assert words in line, line
        assert "Traceback" not in said and "invalid literal" not in said and "Input should" not in line
    inject = next(ln for ln in lines if "services.inject.rotation.server_options" in ln)
    assert "run what follows as another command" in inject and 'e.g. "check inter 2s"' in inject, inject
    port = next(ln for ln in lines if "services.big-port.rotation.socket" in ln)
    assert "host:port of its TCP stats socket (e.g. 127.0.0.1:9999)" in port, port


def test_a_relative_socket_path_is_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    path = config(tmp_path, {"web": {"socket": "run/admin.sock"}, "tcp": {"socket": "[::1]:9999"}})
    cfg = load_config(path)
    assert cfg.services["web"].rotation.socket == str(tmp_path / "run" / "admin.sock")  # type: ignore[union-attr]
    assert cfg.services["tcp"].rotation.socket == "[::1]:9999"  # type: ignore[union-attr]
    out = run_cli("validate", "-c", str(path))  # run from / : the path does not depend on where healerd runs
    assert out.returncode == 0, out
    assert f"{tmp_path / 'run' / 'admin.sock'} does not exist (yet)" in out.stdout + out.stderr, out
