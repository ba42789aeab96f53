"""The local provider against real processes: what a launched machine gets, and what it does not."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from healerd.machines import Lifecycle, Machine
from healerd.providers.base import LaunchRequest, ProviderEnv
from healerd.providers.local import LocalImage, LocalOptions, LocalProvider
from healerd.store import Store

DUMP = "import json, os, sys, time; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ))); time.sleep(30)"


async def test_a_machine_gets_only_the_environment_its_image_declares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEALERD_TEST_SECRET", "s3cr3t-token-of-the-daemon")
    store = Store(tmp_path / "state")
    await store.open()
    provider = LocalProvider("demo", LocalOptions(), env=ProviderEnv(tmp_path / "state", store))
    out = tmp_path / "env.json"
    machine = Machine("web", "web-1", "127.0.0.1:20001", Lifecycle.LAUNCHING, {"port": "20001"})
    await store.machines.upsert(machine, "demo", 0.0)
    image = LocalImage(command=[sys.executable, "-c", DUMP, str(out), "{port}"], env={"APP_MODE": "demo"})
    launched = await provider.launch(LaunchRequest("web", "web-1", "demo-web", "v1", image))
    try:
        for _ in range(100):
            if out.exists() and out.read_text():
                break
            await asyncio.sleep(0.05)
        env = json.loads(out.read_text())
        assert env["APP_MODE"] == "demo" and env["HEALERD_MACHINE_ID"] == "web-1"
        assert "HEALERD_TEST_SECRET" not in env and "s3cr3t" not in json.dumps(env)
        ours = {"HEALERD_MACHINE_ID", "HEALERD_SERVICE", "HEALERD_STATE_DIR", "HEALERD_ADDRESS", "HEALERD_IMAGE"}
        assert set(env) <= {"PATH", "APP_MODE", "LC_CTYPE", "HEALERD_IMAGE_VERSION", *ours}, env
    finally:
        await provider.terminate(launched)
        await store.close()
    assert not await provider.alive(launched)
