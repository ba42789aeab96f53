"""The Debian package (`make deb`), `make install`/`uninstall` into a staging folder, the production config
template and `make run`'s set-up, as an operator meets them."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import require_binary

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "packaging" / "healerd.yaml"
VERSION = re.findall(r'__version__ = "(.+)"', (ROOT / "healerd" / "_version.py").read_text())[0]


def _run(
    *args: str | Path, timeout: float = 60, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )


def _validate(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "healerd", "validate", *extra, "-c", config)


def _template_for_here(tmp_path: Path, text: str) -> Path:
    """The template with its /etc/healerd folders pointed at this tree's checks and playbooks."""
    text = text.replace("/etc/healerd/checks", str(ROOT / "checks"))
    text = text.replace("/etc/healerd/playbooks", str(ROOT / "playbooks"))
    text = text.replace("/var/lib/healerd", str(tmp_path / "state"))
    slack = tmp_path / "slack-url"
    slack.write_text("https://hooks.slack.com/services/T0/B0/x\n")
    text = text.replace("/etc/healerd/slack-url", str(slack))
    path = tmp_path / "healerd.yaml"
    path.write_text(text)
    return path


def _uncomment_examples(text: str) -> str:
    """The template as an operator fills it in: its commented sections (`# notifiers:`, `# services:`, ...)
    made live, the commented keys of the live `daemon:` section left alone."""
    head, sep, tail = text.partition("\n# Where to tell on-call")
    lines = []
    for line in tail.splitlines():
        m = re.match(r"^# ( *)(\S.*)$", line)
        if m and (m[1] or re.match(r"^(notifiers|providers|services):", m[2])):
            line = m[1] + m[2]
        lines.append(line)
    return head + sep + "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# The production template


def test_the_template_validates_empty_and_filled_in_and_is_no_demo(tmp_path: Path) -> None:
    text = TEMPLATE.read_text()
    assert "demo" not in text and "state_dir: /var/lib/healerd" in text
    as_installed = _validate(_template_for_here(tmp_path, text), "--allow-empty")
    assert as_installed.returncode == 0, as_installed.stdout + as_installed.stderr
    assert "0 service(s)" in as_installed.stdout

    filled = _validate(_template_for_here(tmp_path, _uncomment_examples(text)))
    assert filled.returncode == 0, filled.stdout + filled.stderr
    assert "1 service(s), 2 machine(s)" in filled.stdout and "2 notifier(s)" in filled.stdout


def test_one_version_everywhere() -> None:
    changelog = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"healerd ({VERSION}) "), changelog
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == VERSION


# ---------------------------------------------------------------------------------------------------------
# make run's set-up


def test_make_run_installs_healerd_without_the_test_tools(tmp_path: Path) -> None:
    make = require_binary("make")
    dry = _run(make, "-n", "run", f"VENV={tmp_path / 'venv'}", cwd=ROOT)
    assert dry.returncode == 0, dry.stderr
    installs = [line for line in dry.stdout.splitlines() if " install " in line and "-e " in line]
    assert installs and all("[fast]" in line and "[test" not in line for line in installs), dry.stdout
    assert " -qq " in installs[0]  # pip speaks only of errors
    test_dry = _run(make, "-n", "unit", f"VENV={tmp_path / 'venv'}", cwd=ROOT)
    assert "'.[test,fast]'" in test_dry.stdout, test_dry.stdout


def _setuptools_said(output: str) -> list[str]:
    """What the build backend printed past pip's --quiet: its warnings and their `!!` banners."""
    return [line for line in output.splitlines() if "Warning:" in line or line.strip() == "!!"]


def test_installing_healerd_as_make_run_does_prints_no_packaging_warning(tmp_path: Path) -> None:
    # `make run`'s editable install, into a scratch venv (the build backend is what would speak)
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    pip = (sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-deps")
    editable = _run(*pip, "-e", ROOT, timeout=300, cwd=tmp_path)
    assert editable.returncode == 0, editable.stdout[-3000:] + editable.stderr[-3000:]
    assert _setuptools_said(editable.stdout + editable.stderr) == []
    imported = _run(
        venv / "bin" / "python", "-c", "import importlib.util as u; print(u.find_spec('healerd').origin)", cwd=tmp_path
    )
    assert imported.stdout.strip() == str(ROOT / "healerd" / "__init__.py"), imported

    # and the wheel `make deb` and `make install` build
    wheel = _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path, ROOT, timeout=300)
    assert wheel.returncode == 0, wheel.stdout[-3000:] + wheel.stderr[-3000:]
    assert _setuptools_said(wheel.stdout + wheel.stderr) == []
    assert list(tmp_path.glob(f"healerd-{VERSION}-*.whl"))


# ---------------------------------------------------------------------------------------------------------
# make install / uninstall with DESTDIR


def _fake_systemctl(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A `systemctl` first on PATH that records its calls: staging must never act on this host's units."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    calls = tmp_path / "systemctl-calls"
    fake = bindir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"), calls


def test_make_uninstall_with_destdir_never_runs_systemctl(tmp_path: Path) -> None:
    make = require_binary("make")
    env, calls = _fake_systemctl(tmp_path)
    dest = tmp_path / "root"
    (dest / "etc/systemd/system").mkdir(parents=True)
    (dest / "etc/systemd/system/healerd.service").write_text("[Service]\n")
    done = _run(make, "-s", "uninstall", f"DESTDIR={dest}", cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not calls.exists(), calls.read_text()
    assert not (dest / "etc/systemd/system/healerd.service").exists()


def _files_naming(tree: Path, needle: str) -> list[str]:
    """Every file under tree whose bytes contain needle (binary files included; links not followed)."""
    raw = needle.encode()
    found = []
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink() and raw in path.read_bytes():
            found.append(str(path.relative_to(tree)))
    return found


def test_make_install_stages_for_the_final_path(tmp_path: Path) -> None:
    make = require_binary("make")
    env, calls = _fake_systemctl(tmp_path)
    dest = tmp_path / "stage"
    done = _run(
        make, "-s", "install", f"DESTDIR={dest}", "PREFIX=/opt/hd", "BINDIR=/opt/bin", cwd=ROOT, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not calls.exists()
    script = dest / "opt/hd/bin/healerd"
    assert script.read_text().splitlines()[0] == "#!/opt/hd/bin/python"
    assert os.readlink(dest / "opt/bin/healerd") == "/opt/hd/bin/healerd"
    unit = (dest / "etc/systemd/system/healerd.service").read_text()
    assert "ExecStart=/opt/bin/healerd run -c /etc/healerd/healerd.yaml" in unit and "/usr/bin/env" not in unit
    assert (dest / "etc/healerd/healerd.yaml").read_text() == TEMPLATE.read_text()
    assert stat.S_IMODE((dest / "etc/healerd/checks/check_port_open.sh").stat().st_mode) & 0o111
    # the interpreter is the system's, never one in a home folder the unit's ProtectHome= hides
    python = os.path.realpath(dest / "opt/hd/bin/python")
    assert not python.startswith(("/root", "/home")), python
    assert _files_naming(dest, str(dest)) == []
    version = _run(dest / "opt/hd/bin/python", "-m", "healerd", "--version")
    assert version.returncode == 0 and version.stdout.startswith(f"healerd {VERSION}"), version


# ---------------------------------------------------------------------------------------------------------
# make deb


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Builds the package once per session (about a minute): its path and the folder it was built in."""
    require_binary("dpkg-deb")
    make = require_binary("make")
    if os.geteuid() != 0 and shutil.which("dh") is None:
        message = "debhelper is missing; `make deb` as root installs it (apt-get install -y debhelper)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("deb")
    build, dist = work / "build", work / "dist"
    done = _run(make, "-s", "deb", f"DEB_BUILD_DIR={build}", f"DIST={dist}", cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    debs = list(dist.glob(f"healerd_{VERSION}_*.deb"))
    assert len(debs) == 1, list(dist.iterdir())
    return debs[0], build


def test_deb_holds_the_venv_at_its_final_path_and_names_no_build_folder(deb: tuple[Path, Path], tmp_path: Path) -> None:
    package, build = deb
    root = tmp_path / "x"
    assert _run("dpkg-deb", "-x", package, root).returncode == 0
    assert _run("dpkg-deb", "-e", package, root / "DEBIAN").returncode == 0

    assert _files_naming(root, str(build)) == []
    assert os.readlink(root / "usr/bin/healerd") == "../lib/healerd/bin/healerd"
    assert (root / "usr/lib/healerd/bin/healerd").read_text().startswith("#!/usr/lib/healerd/bin/python\n")
    assert "command = /usr/bin/python3.11 -m venv /usr/lib/healerd" in (root / "usr/lib/healerd/pyvenv.cfg").read_text()
    unit = (root / "lib/systemd/system/healerd.service").read_text()
    assert "ExecStart=/usr/bin/healerd run -c /etc/healerd/healerd.yaml" in unit
    assert (root / "usr/lib/sysusers.d/healerd.conf").exists() and (root / "usr/lib/tmpfiles.d/healerd.conf").exists()
    assert (root / "etc/healerd/healerd.yaml").read_text() == TEMPLATE.read_text()
    assert (root / "etc/healerd/playbooks/replace-machine.yaml").exists()
    assert (root / "usr/share/doc/healerd/operations.md").exists()
    assert "/etc/healerd/healerd.yaml" in (root / "DEBIAN/conffiles").read_text().split()
    # the wheels' private libraries are not offered to other packages
    assert not (root / "DEBIAN/shlibs").exists()
    postinst = (root / "DEBIAN/postinst").read_text()
    assert postinst.index("systemd-sysusers") < postinst.index("systemd-tmpfiles") < postinst.index("daemon-reload")
    # not enabled at install (only re-enabled if it was), started only where systemd runs
    assert "was-enabled 'healerd.service'" in postinst and "if [ -d /run/systemd/system ]" in postinst

    # the packaged healerd runs, on the interpreter the package depends on, with only its own libraries
    assert os.readlink(root / "usr/lib/healerd/bin/python3.11") == "../../../bin/python3.11"  # /usr/bin/python3.11
    python = require_binary("/usr/bin/python3.11")
    config = root / "template.yaml"
    config.write_text(TEMPLATE.read_text().replace("/etc/healerd", str(root / "etc/healerd")))
    site = root / "usr/lib/healerd/lib/python3.11/site-packages"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    ran = _run(python, "-S", "-m", "healerd", "validate", "--allow-empty", "-c", config, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "0 service(s)" in ran.stdout


def test_deb_installs_runs_from_path_and_removes_cleanly(deb: tuple[Path, Path]) -> None:
    package, _ = deb
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    if _run("dpkg-query", "-W", "-f=${Status}", "healerd").stdout.startswith("install ok"):
        pytest.skip("healerd is installed on this host: not touching it")
    dpkg = require_binary("dpkg")
    state_was_here = Path("/var/lib/healerd").exists()
    try:
        installed = _run(dpkg, "-i", package, timeout=300)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert shutil.which("healerd", path="/usr/bin") == "/usr/bin/healerd"
        ok = _run("/usr/bin/healerd", "validate", "--allow-empty", "-c", "/etc/healerd/healerd.yaml")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert _run("getent", "passwd", "healerd").returncode == 0
        assert Path("/var/lib/healerd").owner() == "healerd"
        assert Path("/etc/healerd").group() == "healerd"
        assert stat.S_IMODE(Path("/etc/healerd/healerd.yaml").stat().st_mode) == 0o640

        analyze = require_binary("systemd-analyze")
        verify = _run(analyze, "verify", "/lib/systemd/system/healerd.service")
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify
        security = _run(analyze, "security", "--offline=true", "/lib/systemd/system/healerd.service")
        exposure = re.search(r"Overall exposure level for healerd.service: ([\d.]+)", security.stdout)
        assert exposure and float(exposure[1]) <= 2.0, security.stdout[-500:]

        # an operator's edit survives a reinstall (upgrade path: the conffile is kept)
        config = Path("/etc/healerd/healerd.yaml")
        config.write_text(config.read_text() + "# edited by the operator\n")
        again = _run(dpkg, "-i", package, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert config.read_text().endswith("# edited by the operator\n")

        removed = _run(dpkg, "-r", "healerd", timeout=300)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert shutil.which("healerd", path="/usr/local/bin:/usr/bin:/bin") is None
        assert not Path("/usr/lib/healerd").exists()
        assert config.exists()  # removed, not purged: the config stays

        purged = _run(dpkg, "--purge", "healerd", timeout=300)
        assert purged.returncode == 0, purged.stdout + purged.stderr
        assert not Path("/etc/healerd").exists()
        assert "kept /var/lib/healerd" in purged.stderr
    finally:
        _run("dpkg", "--purge", "healerd", timeout=300)
        if not state_was_here:
            shutil.rmtree("/var/lib/healerd", ignore_errors=True)
