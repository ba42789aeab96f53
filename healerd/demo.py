"""The demo fleet's machine image: a tiny web service with a fault switch.

    python -m healerd.demo --port 8080
    curl -X POST localhost:8080/fault -d down      # down | slow | flap | ok

GET /health answers 200 "ok" when healthy; 503 when `down`; after 1.5 s when `slow`; alternately 200
and 503 when `flap`. GET / says who it is. A `down` machine stays down until told `ok` (or replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time

from aiohttp import web

MODES = ("ok", "down", "slow", "flap")
STATE: web.AppKey[dict[str, object]] = web.AppKey("state")


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    mode = state["mode"]
    if mode == "down":
        return web.Response(status=503, text="down\n")
    if mode == "slow":
        await asyncio.sleep(1.5)
    if mode == "flap":
        counter = state["flap"]
        assert isinstance(counter, itertools.count)
        if next(counter) % 2:
            return web.Response(status=503, text="flapping\n")
    return web.Response(text="ok\n")


async def fault(request: web.Request) -> web.Response:
    body = (await request.text()).strip() or request.query.get("mode", "")
    if body.startswith("{"):
        import json

        try:
            body = str(json.loads(body).get("mode", ""))
        except ValueError:
            body = ""
    if body not in MODES:
        return web.json_response(
            {"error": "unknown fault mode", "detail": f"send one of {', '.join(MODES)} (got {body!r})"}, status=400
        )
    request.app[STATE]["mode"] = body
    print(f"fault mode set to {body}", flush=True)
    return web.json_response({"mode": body})


async def index(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "service": "healerd-demo",
            "machine": os.environ.get("HEALERD_MACHINE_ID", "unknown"),
            "pid": os.getpid(),
            "mode": state["mode"],
            "uptime_seconds": round(time.monotonic() - float(state["started"]), 1),  # type: ignore[arg-type]
        }
    )


def build_app(mode: str = "ok") -> web.Application:
    app = web.Application()
    app[STATE] = {"mode": mode, "flap": itertools.count(), "started": time.monotonic()}
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_post("/fault", fault)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m healerd.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=MODES, default="ok", help="start in this mode (a broken image: down)")
    args = p.parse_args(argv)
    print(f"demo machine {os.environ.get('HEALERD_MACHINE_ID', '?')} listening on {args.host}:{args.port}", flush=True)
    web.run_app(build_app(args.mode), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
