"""A real headless Chromium (Debian's `chromium`) for the status page tests, driven over the DevTools protocol:
the DOM after the page's scripts ran (and after its refresh), a screenshot kept as a test artifact, and every
request the page itself made (Network.requestWillBeSent of its own target; the browser's background traffic is
not the page's).

Artifacts go to $HEALERD_TEST_ARTIFACTS, else build/test-artifacts/ in the repository (ignored by git).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from conftest import require_binary

ARTIFACTS = Path(
    os.environ.get("HEALERD_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
)


@dataclass
class Page:
    dom: str
    screenshot: Path
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    refreshed: str = ""  # the DOM after one refresh of the page's main part (when asked for)


class Chromium:
    """One headless browser for a test module; each `open` is a fresh tab."""

    def __init__(self) -> None:
        self.binary = require_binary("chromium")
        self.profile = tempfile.TemporaryDirectory(prefix="healerd-chromium-")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--headless",
                "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile.name}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ws = self._devtools_url()
        self._ids = itertools.count(1)

    def _devtools_url(self, timeout: float = 30.0) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if m := re.search(r"DevTools listening on (ws://\S+)", line):
                return m.group(1)
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"chromium did not start (exit {self.proc.poll()})")

    def open(self, url: str, name: str, dark: bool = False, refresh: bool = False) -> Page:
        """Load `url` in a new tab (1280x1400), wait for it, keep a screenshot as `name`.png; with `refresh`, also
        wait for the page to refresh its main part once and keep that DOM too."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        return asyncio.run(self._open(url, ARTIFACTS / f"{name}.png", dark, refresh))

    async def _open(self, url: str, shot: Path, dark: bool, refresh: bool) -> Page:
        requests: list[str] = []
        part_fetched = asyncio.Event()
        async with aiohttp.ClientSession() as http, http.ws_connect(self.ws, max_msg_size=64 << 20) as ws:
            pending: dict[int, asyncio.Future[Any]] = {}
            events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

            async def reader() -> None:
                async for msg in ws:
                    data = json.loads(msg.data)
                    if "id" in data and data["id"] in pending:
                        pending.pop(data["id"]).set_result(data)
                    elif data.get("method") == "Network.requestWillBeSent":
                        requests.append(data["params"]["request"]["url"])
                        if "part=main" in requests[-1]:
                            part_fetched.set()
                    elif "method" in data:
                        events.put_nowait(data)

            async def call(method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
                mid = next(self._ids)
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                pending[mid] = fut
                msg: dict[str, Any] = {"id": mid, "method": method, "params": params}
                if session:
                    msg["sessionId"] = session
                await ws.send_str(json.dumps(msg))
                answer = await asyncio.wait_for(fut, 30)
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return dict(answer.get("result", {}))

            task = asyncio.create_task(reader())
            try:
                target = (await call("Target.createTarget", url="about:blank"))["targetId"]
                sid = (await call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
                await call("Network.enable", sid)
                await call("Page.enable", sid)
                await call(
                    "Emulation.setDeviceMetricsOverride",
                    sid,
                    width=1280,
                    height=1400,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                scheme = "dark" if dark else "light"
                await call(
                    "Emulation.setEmulatedMedia", sid, features=[{"name": "prefers-color-scheme", "value": scheme}]
                )
                await call("Page.navigate", sid, url=url)
                await _until(events, "Page.loadEventFired", 30)
                await asyncio.sleep(0.5)
                dom = await _html(call, sid)
                png = await call("Page.captureScreenshot", sid, format="png", captureBeyondViewport=True)
                await asyncio.to_thread(shot.write_bytes, base64.b64decode(png["data"]))
                refreshed = ""
                if refresh:
                    await asyncio.wait_for(part_fetched.wait(), 15)
                    await asyncio.sleep(1.0)  # the answer swapped in
                    refreshed = await _html(call, sid)
                await call("Target.closeTarget", targetId=target)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return Page(dom, shot, requests, refreshed)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.profile.cleanup()


async def _until(events: asyncio.Queue[dict[str, Any]], method: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {method} within {timeout:g}s")
        event = await asyncio.wait_for(events.get(), left)
        if event.get("method") == method:
            return event


async def _html(call: Any, sid: str) -> str:
    out = await call("Runtime.evaluate", sid, expression="document.documentElement.outerHTML", returnByValue=True)
    return str(out["result"]["value"])
