"""Evidence bundles (healerd.remediation.forensics): written atomically and once per incident, verifiable later.

The forensics reader opens `<state_dir>/forensics/<incident>/` days later: every file must be there with the
SHA-256 its manifest records, a half-written bundle must never carry the final name, and a step re-run after
a crash must not rewrite (and so silently change) evidence that was already collected.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from healerd.remediation.forensics import verify, write_bundle

INCIDENT = "01M80ABCDEFGHJKMNP"


def evidence(**extra: Any) -> dict[str, Any]:
    return {
        "incident.json": {"id": INCIDENT, "timeline": [{"type": "incident.opened", "timestamp": 1.5}]},
        "checks.json": {"health": [{"status": "CRITICAL", "message": "HTTP 503"}]},
        "machine.json": {"id": "web-1", "alive": True, "pid": 4242},
        "console.log": "demo machine web-1 listening on 127.0.0.1:20001\nfault mode set to down\n",
        "evidence.bin": b"\x00\x01\xffraw bytes",
        **extra,
    }


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_bundle_has_every_file_and_a_manifest_of_their_sha256(tmp_path: Path) -> None:
    root = tmp_path / "forensics"
    bundle = write_bundle(root, INCIDENT, evidence())
    assert bundle == root / INCIDENT
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*evidence(), "manifest.json"])
    # str and bytes as they are, anything else as JSON
    assert (bundle / "console.log").read_text() == evidence()["console.log"]
    assert (bundle / "evidence.bin").read_bytes() == b"\x00\x01\xffraw bytes"
    assert json.loads((bundle / "machine.json").read_text()) == {"id": "web-1", "alive": True, "pid": 4242}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["incident"] == INCIDENT
    assert manifest["algorithm"] == "sha256"
    assert isinstance(manifest["created_at"], float)
    assert manifest["files"] == {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() for name in evidence()}
    assert verify(bundle) == []
    assert list(root.iterdir()) == [bundle], "no temporary folder is left beside a finished bundle"


def test_a_complete_bundle_is_not_rewritten(tmp_path: Path) -> None:
    """A step re-run after a crash collects again; the evidence already on disk is kept as it is."""
    root = tmp_path / "forensics"
    bundle = write_bundle(root, INCIDENT, evidence())
    before = snapshot(bundle)
    inode = bundle.stat().st_ino
    again = write_bundle(root, INCIDENT, evidence(**{"console.log": "later output", "new.json": {"x": 1}}))
    assert again == bundle
    assert snapshot(bundle) == before
    assert bundle.stat().st_ino == inode
    assert not (bundle / "new.json").exists()
    assert verify(bundle) == []


def test_a_writer_that_fails_half_way_leaves_no_bundle_under_the_final_name(tmp_path: Path) -> None:
    root = tmp_path / "forensics"
    # the second file cannot be serialized: the writer stops after writing the first one
    with pytest.raises(TypeError):
        write_bundle(root, INCIDENT, {"machine.json": {"id": "web-1"}, "checks.json": {("a", "b"): 1}})
    assert not (root / INCIDENT).exists(), "a half-written bundle must never have the final name"

    # the re-run (same process) replaces the interrupted attempt and produces a complete bundle
    bundle = write_bundle(root, INCIDENT, evidence())
    assert verify(bundle) == []
    assert json.loads((bundle / "checks.json").read_text()) == evidence()["checks.json"]
    assert [p.name for p in root.iterdir()] == [INCIDENT], "the interrupted attempt's folder is gone"


def test_a_temporary_folder_left_by_a_killed_writer_is_ignored(tmp_path: Path) -> None:
    """healerd killed while writing (another pid): its leftover never passes for the bundle or leaks into it."""
    root = tmp_path / "forensics"
    stale = root / f".{INCIDENT}.999999.tmp"
    stale.mkdir(parents=True)
    (stale / "machine.json").write_text('{"id": "half')
    (stale / "planted.txt").write_text("not evidence")
    assert not (root / INCIDENT).exists()

    bundle = write_bundle(root, INCIDENT, evidence())
    assert verify(bundle) == []
    assert not (bundle / "planted.txt").exists()
    assert json.loads((bundle / "machine.json").read_text())["id"] == "web-1"


def test_an_incomplete_bundle_under_the_final_name_is_collected_again(tmp_path: Path) -> None:
    root = tmp_path / "forensics"
    final = root / INCIDENT
    final.mkdir(parents=True)
    (final / "machine.json").write_text("{}")  # no manifest: not a complete bundle
    bundle = write_bundle(root, INCIDENT, evidence())
    assert bundle == final
    assert verify(bundle) == []
    assert json.loads((bundle / "machine.json").read_text())["id"] == "web-1"


def test_verify_detects_a_changed_file(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, INCIDENT, evidence())
    log = bundle / "console.log"
    log.write_text(log.read_text().replace("fault mode set to down", "all good"))
    assert verify(bundle) == ["console.log does not match its SHA-256"]


def test_verify_detects_a_single_flipped_byte_and_a_truncation(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, INCIDENT, evidence())
    raw = bytearray((bundle / "evidence.bin").read_bytes())
    raw[0] ^= 1
    (bundle / "evidence.bin").write_bytes(bytes(raw))
    with (bundle / "checks.json").open("r+b") as f:
        f.truncate(10)
    assert sorted(verify(bundle)) == [
        "checks.json does not match its SHA-256",
        "evidence.bin does not match its SHA-256",
    ]


def test_verify_detects_a_missing_file_and_an_unreadable_manifest(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, INCIDENT, evidence())
    (bundle / "machine.json").unlink()
    assert verify(bundle) == ["machine.json is missing"]
    (bundle / "manifest.json").write_text("{not json")
    (problem,) = verify(bundle)
    assert problem.startswith("manifest.json unreadable")
    (bundle / "manifest.json").unlink()
    (problem,) = verify(bundle)
    assert problem.startswith("manifest.json unreadable")
    assert verify(tmp_path / "no-such-bundle")[0].startswith("manifest.json unreadable")


def test_verify_detects_a_file_planted_after_collection(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, INCIDENT, evidence())
    (bundle / "extra.log").write_text("written later")
    assert verify(bundle) != []


def test_bundle_files_are_synced_before_the_bundle_gets_its_name(tmp_path: Path, monkeypatch: Any) -> None:
    """Every file is fsynced before the rename: after a power cut the bundle is complete or absent."""
    root = tmp_path / "forensics"
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    renamed_after: list[list[str]] = []

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        renamed_after.append([Path(p).name for p in synced])
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_bundle(root, INCIDENT, evidence())
    assert len(renamed_after) == 1
    assert set(evidence()) <= set(renamed_after[0])


def test_the_manifest_is_synced_before_the_bundle_gets_its_name(tmp_path: Path, monkeypatch: Any) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_bundle(tmp_path, INCIDENT, evidence())
    assert "manifest.json" in synced
