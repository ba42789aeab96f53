"""Config loading: typed models, relative paths, and every mistake reported with its path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from healerd.config import ConfigError, Mode, load_config

GOOD = """\
daemon:
  listen: 127.0.0.1:19464
  state_dir: ./state
  mode: observe
providers:
  lab: {kind: static}
services:
  web:
    provider: lab
    min_healthy: 50%
    machines:
      - {id: web-1, address: "127.0.0.1:8001"}
      - {id: web-2, address: "127.0.0.1:8002"}
      - {id: web-3, address: "127.0.0.1:8003"}
    checks:
      - name: health
        kind: http
        url: "http://{address}/health"
        interval: 500ms
        timeout: 250ms
        fall: 4
        expect: {status: [200, 204], max_latency: 100ms}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "healerd.yaml"
    path.write_text(text)
    return path


def test_good_config_loads_with_typed_values(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.daemon.mode is Mode.OBSERVE
    assert cfg.daemon.state_dir == (tmp_path / "state").resolve()  # relative to the file's folder
    assert cfg.daemon.check_paths == [(tmp_path / "checks").resolve()]
    web = cfg.services["web"]
    assert web.desired == 3 and web.min_healthy == 2  # 50% of 3, rounded up
    check = web.checks[0]
    assert (check.interval, check.timeout, check.fall, check.rise) == (0.5, 0.25, 4, 2)
    assert check.options.expect.max_latency == pytest.approx(0.1)  # type: ignore[attr-defined]


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return [p.render(info.value.filename) for p in info.value.problems]


def test_three_mistakes_are_all_reported_with_path_and_line(tmp_path: Path) -> None:
    text = GOOD.replace("interval: 500ms", "interval: 5 sec").replace("fall: 4", "fal: 4")
    text = text.replace("http://{address}/health", "http://{adress}/health")
    problems = problems_of(tmp_path, text)
    assert len(problems) == 3, problems
    joined = "\n".join(problems)
    lines = text.splitlines()
    line_of = {key: i + 1 for i, line in enumerate(lines) for key in ("interval:", "fal:", "url:") if key in line}
    assert f":{line_of['interval:']}: services.web.checks[0].interval: expected a duration" in joined
    assert f":{line_of['fal:']}: services.web.checks[0].fal: unknown key 'fal' (did you mean 'fall'?)" in joined
    assert f":{line_of['url:']}: services.web.checks[0].url: unknown template field {{adress}}" in joined
    assert "did you mean 'address'" in joined


def test_errors_in_separate_sections_are_all_listed(tmp_path: Path) -> None:
    text = GOOD.replace("listen: 127.0.0.1:19464", "listen: nowhere").replace("provider: lab", "provider: lba")
    text = text.replace("kind: http", "kind: htp") + "servics: {}\n"
    joined = "\n".join(problems_of(tmp_path, text))
    assert "daemon.listen: expected host:port" in joined
    assert "services.web.provider: unknown provider 'lba' (did you mean 'lab'?)" in joined
    assert "unknown check kind 'htp' (did you mean 'http'?)" in joined
    assert "servics: unknown key 'servics' (did you mean 'services'?)" in joined


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("timeout: 250ms", "timeout: 2s"), "timeout (2s) is longer than interval"),
        (("min_healthy: 50%", "min_healthy: 5"), "min_healthy (5) is more than desired (3)"),
        (("min_healthy: 50%", "min_healthy: 150%"), "cannot exceed 100%"),
        (("id: web-2", "id: web-1"), "machine id 'web-1' appears twice"),
        (('"127.0.0.1:8002"', '"127.0.0.1"'), "the port is missing; write host:port"),
        (("status: [200, 204]", "status: [200, 999]"), "between 100 and 599"),
        (("fall: 4", "fall: 0"), "must be at least 1, got 0"),
        (("http://{address}/health", "http://{address}/{"), "literal brace"),
        (("http://{address}/health", "ftp://{address}/"), "must start with http://"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    joined = "\n".join(problems_of(tmp_path, GOOD.replace(*change)))
    assert expected in joined


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "daemon:\n  listen: [oops\nservices: {}\n")
    assert len(problems) == 1 and "invalid YAML" in problems[0]
    assert ":3:" in problems[0] or ":2:" in problems[0]


def test_service_checks_cannot_use_machine_fields(tmp_path: Path) -> None:
    text = GOOD + (
        "    service_checks:\n      - {name: lb, kind: http, url: 'http://{address}/'}\n"
        "      - {name: lb2, kind: http, url: 'http://127.0.0.1:9/{service}'}\n"
    )
    joined = "\n".join(problems_of(tmp_path, text))
    assert "service_checks[0].url: template field not available here {address}" in joined
    assert "service_checks[1]" not in joined


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.yaml")


def test_example_config_is_valid() -> None:
    cfg = load_config(Path(__file__).parent.parent / "config.example.yaml")
    assert cfg.services


# ---------------------------------------------------------------------------------------------------------
# YAML: anchors and merges are fine, a key written twice is not


def test_anchors_and_merge_overrides_are_not_duplicates(tmp_path: Path) -> None:
    text = GOOD.replace("      - name: health\n", "      - &health\n        name: health\n") + (
        "  api:\n"
        "    provider: lab\n"
        "    machines: [{id: api-1, address: '127.0.0.1:9001'}]\n"
        "    checks:\n"
        "      - {<<: *health, name: ready, interval: 1s}\n"
    )
    cfg = load_config(write(tmp_path, text))
    ready = cfg.services["api"].checks[0]
    assert (ready.name, ready.interval, ready.fall) == ("ready", 1.0, 4)  # written keys win over merged ones


def test_a_key_written_twice_in_a_playbook_is_refused_too() -> None:
    from healerd import _yaml

    with pytest.raises(_yaml.YamlSyntaxError) as info:
        _yaml.load("name: a\nsteps: []\nname: b\n")
    assert info.value.line == 3
    assert str(info.value) == "key 'name' appears twice (lines 1 and 3); keep one of them"


def test_keys_that_are_not_strings_are_refused_wherever_they_are(tmp_path: Path) -> None:
    text = GOOD.replace("expect: {status: [200, 204], max_latency: 100ms}", "expect: {200: ok}")
    joined = "\n".join(problems_of(tmp_path, text))
    assert "services.web.checks[0].expect.200: keys must be strings (200 is read as a number); quote it" in joined


# ---------------------------------------------------------------------------------------------------------
# daemon: who may reach the API, and over what


def test_listening_on_the_network_is_fine_with_a_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    text = GOOD.replace("listen: 127.0.0.1:19464", "listen: 0.0.0.0:19464\n  api_token_file: token").replace(
        "  mode: observe", "  mode: observe\n  allowed_hosts: [Healerd.Example.com, '10.0.0.5:19464', '[fd00::5]']"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.daemon.listen_host == "0.0.0.0" and cfg.daemon.api_token_file == tmp_path / "token"
    assert cfg.daemon.allowed_hosts == ["healerd.example.com", "10.0.0.5:19464", "[fd00::5]"]
    assert cfg.warnings == ()


@pytest.mark.parametrize("listen", ["localhost:19464", "'[::1]:19464'", "127.0.0.2:19464"])
def test_loopback_needs_no_token(tmp_path: Path, listen: str) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace("listen: 127.0.0.1:19464", f"listen: {listen}")))
    assert cfg.daemon.api_token_file is None


def _certificate(tmp_path: Path, name: str, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """A self-signed certificate and its key, as PEM files."""
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "healerd.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return cert_path, key_path


def _tls(cert: str, key: str) -> str:
    return GOOD.replace("  mode: observe", f"  mode: observe\n  tls_cert_file: {cert}\n  tls_key_file: {key}")


def test_tls_files_resolve_against_the_config_folder(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "api")
    cfg = load_config(write(tmp_path, _tls("./api.crt", "api.key")))
    assert (cfg.daemon.tls_cert_file, cfg.daemon.tls_key_file) == (cert, key)


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    _certificate(tmp_path, "one")
    _certificate(tmp_path, "two")
    (problem,) = problems_of(tmp_path, _tls("one.crt", "two.key"))
    assert f"daemon.tls_key_file: {tmp_path / 'two.key'} is not the private key of {tmp_path / 'one.crt'}" in problem


def test_an_encrypted_key_is_refused_without_asking_for_its_passphrase(tmp_path: Path) -> None:
    _certificate(tmp_path, "api", passphrase=b"secret")
    (problem,) = problems_of(tmp_path, _tls("api.crt", "api.key"))
    assert (
        "daemon.tls_key_file:" in problem
        and "is encrypted with a passphrase; healerd needs an unencrypted key" in problem
    )


def test_a_certificate_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    (tmp_path / "api.crt").write_text("not a certificate\n")
    (tmp_path / "api.key").write_text("not a key\n")
    (problem,) = problems_of(tmp_path, _tls("api.crt", "api.key"))
    assert "daemon.tls_cert_file: cannot load" in problem and "as a PEM certificate" in problem


def test_a_problem_quotes_a_long_wrong_value_only_in_part(tmp_path: Path) -> None:
    machines = ", ".join(f"{{id: m{i}, address: '127.0.0.1:80'}}" for i in range(10001))
    path = tmp_path / "big.yaml"
    path.write_text(
        "providers: {lab: {kind: static}}\n"
        "services:\n  web:\n    provider: lab\n"
        "    checks: [{name: h, kind: tcp, address: '{address}'}]\n"
        f"    machines: [{machines}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.message == "lists 10001 items, more than the 10000 allowed; remove some"


# -- cluster -------------------------------------------------------------------------------------------------
def _clustered(tmp_path: Path, cluster: str, token: bool = True) -> str:
    (tmp_path / "token").write_text("t0ken\n")
    text = GOOD.replace("  mode: observe\n", "  mode: observe\n  api_token_file: token\n") if token else GOOD
    return text + "cluster:\n" + "".join(f"  {line}\n" for line in cluster.strip().splitlines())


def test_a_cluster_section_loads_with_its_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, _clustered(tmp_path, "store: postgresql://healerd@db/healerd\nnode: hd-a")))
    assert cfg.cluster is not None
    assert (cfg.cluster.node, cfg.cluster.lease_ttl, cfg.cluster.confirm_from) == ("hd-a", 10.0, 2)
    assert "cluster node hd-a" in cfg.summary() and "lease_ttl 10s" in cfg.summary()
    assert load_config(write(tmp_path, GOOD)).cluster is None  # absent: alone on SQLite


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ("node: a", "set one of store (the PostgreSQL connection string) or store_file"),
        (
            "store: mysql://db/healerd",
            "expected a PostgreSQL connection string, starting with postgresql://, not mysql://",
        ),
        ("store: postgresql://db/h\nlease_ttl: 1s", "lease_ttl 1s is too short"),
        ("store: postgresql://db/h\nlease_ttl: 1h", "lease_ttl 1h is more than 5m; use 5m or less"),
        ("store: postgresql://db/h\nconfirm_from: 0", "confirm_from"),
        ("store: postgresql://db/h\nnode: 'a b'", "node"),
        ("store_file: missing-dsn", "missing-dsn"),
        ("store: postgresql://db/h\nleas_ttl: 5s", "leas_ttl"),
    ],
)
def test_cluster_mistakes_are_named_with_their_fix(tmp_path: Path, cluster: str, expected: str) -> None:
    problems = problems_of(tmp_path, _clustered(tmp_path, cluster))
    assert any(expected in p for p in problems), problems
    assert all("cluster" in p for p in problems), problems


def test_a_cluster_needs_the_token_its_nodes_call_each_other_with(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, _clustered(tmp_path, "store: postgresql://db/h", token=False))
    assert any("set cluster.token_file" in p and "daemon.api_token_file" in p for p in problems), problems


def test_a_node_listening_everywhere_must_say_where_the_others_reach_it(tmp_path: Path) -> None:
    text = _clustered(tmp_path, "store: postgresql://db/h").replace("127.0.0.1:19464", "0.0.0.0:19464")
    problems = problems_of(tmp_path, text)
    assert any("set cluster.advertise" in p for p in problems), problems
