"""Evidence bundles: `<state_dir>/forensics/<incident>/` with a manifest of SHA-256 hashes, written
atomically (a half-written bundle never has the final name)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(bundle: Path) -> list[str]:
    """Problems with a bundle (empty when every file matches its manifest hash). A symbolic link is never
    followed: healerd writes none, so one is a problem, not a file to hash (it could lead to /dev/zero)."""
    if bundle.is_symlink():
        return [f"{bundle.name} is a symbolic link, not a bundle healerd wrote"]
    try:
        manifest = json.loads(_read_plain(bundle / "manifest.json"))
    except (OSError, ValueError) as exc:
        return [f"manifest.json unreadable: {exc}"]
    problems = []
    listed = set(manifest.get("files", {}))
    for extra in sorted(p.name for p in bundle.iterdir() if p.name != "manifest.json" and p.name not in listed):
        problems.append(f"{extra} is not in the manifest (added after collection)")
    for name, digest in manifest.get("files", {}).items():
        p = bundle / name
        if not _plain_name(name) or not p.is_file() or p.is_symlink():
            problems.append(f"{name} is missing" if not p.is_symlink() else f"{name} is a symbolic link")
        elif _sha256(p) != digest:
            problems.append(f"{name} does not match its SHA-256")
    return problems


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _read_plain(path: Path, limit: int = 1 << 20) -> bytes:
    """The first `limit` bytes of a regular file, never through a symbolic link (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit)
    finally:
        os.close(fd)


def listing(root: Path, incident: str) -> dict[str, Any] | None:
    """The bundle of `incident` under `root` as the API shows it: each file of its manifest with its SHA-256 and
    size (None when it is missing or not a regular file), and the manifest. None when there is no bundle.

    Nothing outside `root` is looked at: the bundle's folder and files are opened relative to `root` without
    following symbolic links (one planted in the forensics folder is reported as missing, never stat'ed)."""
    if not _plain_name(incident):
        return None
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        root_fd = os.open(root, flags)
    except OSError:
        return None
    try:
        try:
            fd = os.open(incident, flags, dir_fd=root_fd)
        except OSError:  # missing, or a symbolic link
            return None
        try:
            return _listing(fd, root / incident, incident)
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)


def _listing(fd: int, path: Path, incident: str) -> dict[str, Any] | None:
    try:
        manifest_fd = os.open("manifest.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(manifest_fd).st_mode):
            return None
        with os.fdopen(manifest_fd, "rb", closefd=False) as f:
            manifest = json.loads(f.read(1 << 20))
    except ValueError:
        manifest = {"unreadable": "manifest.json is not JSON"}
    finally:
        os.close(manifest_fd)
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    files = []
    for name, digest in sorted(listed.items()) if isinstance(listed, dict) else []:
        size = None
        if _plain_name(name):
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                info = None
            size = info.st_size if info is not None and stat.S_ISREG(info.st_mode) else None
        files.append({"name": name, "sha256": digest, "bytes": size})
    return {"incident": incident, "path": str(path), "files": files, "manifest": manifest}


def write_bundle(root: Path, incident: str, files: dict[str, Any]) -> Path:
    """Write the bundle for `incident` unless a complete one exists; returns its folder.

    `files` maps names to content: str/bytes written as they are, anything else as JSON.
    """
    final = root / incident
    if final.is_dir() and not verify(final):
        return final  # already collected (a step re-run after a crash)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{incident}.*.tmp"):  # left by a writer that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{incident}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    hashes: dict[str, str] = {}
    for name, content in files.items():
        data = (
            content
            if isinstance(content, bytes)
            else (content.encode() if isinstance(content, str) else json.dumps(content, indent=2, default=str).encode())
        )
        path = tmp / name
        with path.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        hashes[name] = hashlib.sha256(data).hexdigest()
    manifest = {"incident": incident, "created_at": time.time(), "algorithm": "sha256", "files": hashes}
    with (tmp / "manifest.json").open("w") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)  # an incomplete bundle from an interrupted attempt
    os.replace(tmp, final)
    _fsync_dir(root)  # the rename itself survives a power cut
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
