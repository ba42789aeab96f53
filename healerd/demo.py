"""The demo fleet's machine image: a tiny web service with a fault switch.

    python -m healerd.demo --port 8080
    curl -X POST localhost:8080/fault -d down      # or any mode below; `ok` mends it

Fault modes (they change GET /health only; GET / and POST /fault always answer):

  ok          200 "ok"
  down        503 "down"
  slow[:S]    200 after S seconds (default 1.5), e.g. `slow:0.6`
  flap        alternately 200 and 503
  hang        the connection is accepted but never answered (the socket stays open)
  reset       the connection is closed abruptly (TCP RST), no HTTP answer
  garbage     bytes that are not HTTP, then the connection is closed
  leak[:R]    200, but slower and slower: R seconds more latency per second since the mode was set
              (default 0.1, i.e. +100 ms a second), capped at 30 s; a slow degradation
  exit        the process exits with status 3 right after answering the POST

A machine may start in any mode but `exit` (--mode), and with a latency of its own (--latency S: every /health
and /app answer takes S seconds more; the demo's v3-slow image is a build three times slower than v1).
GET / says who it is and how many requests its app
served. GET /app is the service itself (what a load balancer sends users to): it answers 200 whatever the
fault mode (a machine whose own health check fails still serves until it is drained), `?slow=S` holds the
answer S seconds (at most 30). A broken machine stays broken until told `ok` (or replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping

from aiohttp import web

MODES = ("ok", "down", "slow", "flap", "hang", "reset", "garbage", "exit", "leak")
#: modes taking an optional `:SECONDS` argument, with its default
ARGUMENTS = {"slow": 1.5, "leak": 0.1}
SLOW_SECONDS = ARGUMENTS["slow"]
LEAK_RATE = ARGUMENTS["leak"]
LEAK_CAP = 30.0
#: how long a `hang` request is held before its connection is dropped (still without an answer)
HANG_SECONDS = 3600.0
GARBAGE = b"\x00\x01 not http\r\n\r\n"
EXIT_STATUS = 3
STATE: web.AppKey[dict[str, object]] = web.AppKey("state")


def parse_mode(text: str) -> tuple[str, float | None]:
    """`name` or `name:seconds` -> (name, seconds or None); ValueError says what is accepted."""
    name, sep, arg = text.strip().partition(":")
    if name not in MODES:
        raise ValueError(f"unknown fault mode {text!r}: send one of {', '.join(MODES)}")
    if not sep:
        return name, ARGUMENTS.get(name)
    if name not in ARGUMENTS:
        raise ValueError(f"fault mode {name!r} takes no argument (got {text!r})")
    try:
        seconds = float(arg)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:  # also rejects nan
        raise ValueError(f"{name}:SECONDS needs a number of seconds between 0 and 3600 (got {arg!r})")
    return name, seconds


def _start_mode(text: str) -> str:
    """argparse type of --mode: any mode but exit."""
    try:
        name, _ = parse_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name == "exit":
        raise argparse.ArgumentTypeError("a machine cannot start in mode exit")
    return text.strip()


def _latency_arg(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 30:
        raise argparse.ArgumentTypeError(f"--latency needs seconds between 0 and 30, got {text!r}")
    return seconds


def _set_mode(state: dict[str, object], text: str) -> None:
    name, arg = parse_mode(text)
    state.update(mode=text.strip(), name=name, arg=arg, since=time.monotonic())


def leak_delay(state: Mapping[str, object], now: float | None = None) -> float:
    """The latency of /health in `leak` mode right now."""
    since = float(state["since"])  # type: ignore[arg-type]
    rate = float(state["arg"] if state["arg"] is not None else LEAK_RATE)  # type: ignore[arg-type]
    elapsed = (time.monotonic() if now is None else now) - since
    return min(LEAK_CAP, max(0.0, rate * elapsed))


def _abort(request: web.Request, *, rst: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # linger on, 0 seconds: close() sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def health(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    mode = state["name"]
    await _latency(state)
    if mode == "down":
        return web.Response(status=503, text="down\n")
    if mode == "slow":
        await asyncio.sleep(float(state["arg"]))  # type: ignore[arg-type]
    elif mode == "leak":
        await asyncio.sleep(leak_delay(state))
    elif mode == "flap":
        counter = state["flap"]
        assert isinstance(counter, itertools.count)
        if next(counter) % 2:
            return web.Response(status=503, text="flapping\n")
    elif mode == "hang":
        stopping = state["stopping"]
        assert isinstance(stopping, asyncio.Event)
        with contextlib.suppress(TimeoutError):  # held until the server stops (or HANG_SECONDS pass)
            async with asyncio.timeout(HANG_SECONDS):
                await stopping.wait()
        _abort(request, rst=False)
        return web.Response(status=503)  # never written: the transport is gone
    elif mode == "reset":
        _abort(request, rst=True)
        return web.Response(status=503)  # never written
    elif mode == "garbage":
        if request.transport is not None:
            request.transport.write(GARBAGE)
            request.transport.close()
        return web.Response(status=503)  # never written
    return web.Response(text="ok\n")


async def _latency(state: Mapping[str, object]) -> None:
    """The machine's own latency (--latency): every /health and /app answer takes at least this long."""
    latency = float(state.get("latency", 0.0))  # type: ignore[arg-type]
    if latency > 0:
        await asyncio.sleep(latency)


async def fault(request: web.Request) -> web.Response:
    body = (await request.text()).strip() or request.query.get("mode", "")
    if body.startswith("{"):
        try:
            body = str(json.loads(body).get("mode", ""))
        except (ValueError, AttributeError):
            body = ""
    try:
        _set_mode(request.app[STATE], body)
    except ValueError as exc:
        return web.json_response({"error": "unknown fault mode", "detail": str(exc)}, status=400)
    mode = request.app[STATE]["mode"]
    print(f"fault mode set to {mode}", flush=True)
    if request.app[STATE]["name"] == "exit":
        # answer first, then go: the caller sees 200 and the next connection is refused
        asyncio.get_running_loop().call_later(0.05, _exit)
    return web.json_response({"mode": mode})


def _exit() -> None:
    print(f"exiting with status {EXIT_STATUS} (fault mode exit)", flush=True)
    os._exit(EXIT_STATUS)


async def app_request(request: web.Request) -> web.Response:
    """The service's own traffic, counted with the wall-clock time of the first and the last request."""
    state = request.app[STATE]
    now = time.time()
    state["requests"] = int(state.get("requests", 0)) + 1  # type: ignore[call-overload]
    state.setdefault("first_request_at", now)
    state["last_request_at"] = now
    try:
        slow = min(30.0, max(0.0, float(request.query.get("slow", "0"))))
    except ValueError:
        slow = 0.0
    await _latency(state)
    if slow:
        await asyncio.sleep(slow)
    return web.Response(text=f"served by {os.environ.get('HEALERD_MACHINE_ID', 'unknown')}\n")


async def index(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "service": "healerd-demo",
            "machine": os.environ.get("HEALERD_MACHINE_ID", "unknown"),
            "pid": os.getpid(),
            "mode": state["mode"],
            "version": state["version"],
            "latency": state["latency"],
            "uptime_seconds": round(time.monotonic() - float(state["started"]), 1),  # type: ignore[arg-type]
            "requests": state.get("requests", 0),
            "first_request_at": state.get("first_request_at"),
            "last_request_at": state.get("last_request_at"),
        }
    )


def build_app(mode: str = "ok", latency: float = 0.0) -> web.Application:
    app = web.Application()
    stopping = asyncio.Event()
    state: dict[str, object] = {
        "flap": itertools.count(),
        "started": time.monotonic(),
        "stopping": stopping,
        "latency": latency,
        "version": os.environ.get("HEALERD_IMAGE_VERSION", ""),
    }
    _set_mode(state, mode)
    app[STATE] = state

    async def release_hung(app: web.Application) -> None:
        stopping.set()

    app.on_shutdown.append(release_hung)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/app", app_request)
    app.router.add_post("/fault", fault)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m healerd.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--mode",
        type=_start_mode,
        default="ok",
        metavar="{" + ",".join(m for m in MODES if m != "exit") + "}",
        help="start in this fault mode (a broken image: down); slow and leak take :SECONDS",
    )
    p.add_argument(
        "--latency",
        type=_latency_arg,
        default=0.0,
        metavar="SECONDS",
        help="every /health and /app answer takes this long (a slower build: healthy, but worse)",
    )
    args = p.parse_args(argv)
    print(f"demo machine {os.environ.get('HEALERD_MACHINE_ID', '?')} listening on {args.host}:{args.port}", flush=True)
    # shutdown_timeout: a hung /health must not hold a SIGTERM back for aiohttp's default minute
    web.run_app(
        build_app(args.mode, args.latency),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=1.0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
