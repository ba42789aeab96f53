"""The `file` rotation: the in-service set written for a load balancer or a file-based service discovery
(Prometheus' file_sd format), atomically."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, field_validator

from ..machines import Machine
from ..paths import resolve_path
from .base import Rotation, RotationOptions


class FileRotationOptions(RotationOptions):
    path: Path | None = None  # default: <state_dir>/rotation-<service>.json

    @field_validator("path")
    @classmethod
    def _path(cls, v: Path | None) -> Path | None:
        return None if v is None else resolve_path(v)


class FileRotation(Rotation):
    """A JSON file in Prometheus file_sd format, one target group per machine, replaced atomically:

    [{"targets": ["127.0.0.1:20001"], "labels": {"service": "web", "machine": "web-1a2b"}}, ...]
    """

    kind = "file"
    Config = FileRotationOptions

    def __init__(self, service: str, options: BaseModel, *, state_dir: Path, provider: Any = None) -> None:
        super().__init__(service, options, state_dir=state_dir, provider=provider)
        assert isinstance(options, FileRotationOptions)
        self.path = options.path or state_dir / f"rotation-{service}.json"
        self._lock = asyncio.Lock()

    def _read(self) -> dict[str, str]:
        try:
            groups = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"rotation file {self.path} is unreadable ({exc}); fix or delete it") from None
        return {g["labels"]["machine"]: g["targets"][0] for g in groups if g.get("targets")}

    def _write(self, members: dict[str, str]) -> None:
        groups = [
            {"targets": [address], "labels": {"service": self.service, "machine": mid}}
            for mid, address in sorted(members.items())
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(groups, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def _update(self, change: dict[str, str | None]) -> None:
        async with self._lock:
            members = await asyncio.to_thread(self._read)
            new = dict(members)
            for mid, address in change.items():
                if address is None:
                    new.pop(mid, None)
                else:
                    new[mid] = address
            if new != members or not self.path.exists():
                await asyncio.to_thread(self._write, new)

    async def add(self, machine: Machine) -> None:
        await self._update({machine.id: machine.address})

    async def remove(self, machine: Machine) -> None:
        await self._update({machine.id: None})

    async def addresses(self) -> list[str]:
        return sorted((await asyncio.to_thread(self._read)).values())

    async def members(self) -> dict[str, str]:
        return await asyncio.to_thread(self._read)

    async def sync(self, machines: list[Machine], leaving: Sequence[Machine] = ()) -> None:
        async with self._lock:
            members = await asyncio.to_thread(self._read)
            want = {m.id: m.address for m in machines}
            want.update({m.id: members[m.id] for m in leaving if m.id in members})
            if want != members or not self.path.exists():
                await asyncio.to_thread(self._write, want)
