"""Evidence bundles: `<state_dir>/forensics/<incident>/` with a manifest of SHA-256 hashes, written
atomically (a half-written bundle never has the final name)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
    """Problems with a bundle (empty when every file matches its manifest hash)."""
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"manifest.json unreadable: {exc}"]
    problems = []
    listed = set(manifest.get("files", {}))
    for extra in sorted(p.name for p in bundle.iterdir() if p.name != "manifest.json" and p.name not in listed):
        problems.append(f"{extra} is not in the manifest (added after collection)")
    for name, digest in manifest.get("files", {}).items():
        p = bundle / name
        if not p.is_file():
            problems.append(f"{name} is missing")
        elif _sha256(p) != digest:
            problems.append(f"{name} does not match its SHA-256")
    return problems


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
