"""A real gRPC server for the grpc check's tests, run as its own process (so a test can freeze it with SIGSTOP):
grpcio's server with the standard health service, its statuses set through stdin.

    python grpc_health_server.py PORT [--no-health] [--tls CERT KEY]

Prints "ready" once it listens. Each stdin line `SERVICE STATUS` (SERVICE "-" for the server as a whole,
STATUS one of SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN; `clear SERVICE` forgets it) is applied, then
answered "ok".
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main(argv: list[str]) -> None:
    port = int(argv[0])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = None
    if "--no-health" not in argv:
        servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"127.0.0.1:{port}"
    if "--tls" in argv:
        at = argv.index("--tls")
        with open(argv[at + 1], "rb") as c, open(argv[at + 2], "rb") as k:
            server.add_secure_port(address, grpc.ssl_server_credentials([(k.read(), c.read())]))
    else:
        server.add_insecure_port(address)
    server.start()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if servicer is not None and len(words) == 2:
            name, status = (words[1], None) if words[0] == "clear" else (words[0], words[1])
            service = "" if name == "-" else name
            if status is None:
                servicer._server_status.pop(service, None)  # the servicer has no public way to forget one
            else:
                servicer.set(service, health_pb2.HealthCheckResponse.ServingStatus.Value(status))
        print("ok", flush=True)
    server.stop(0)


if __name__ == "__main__":
    main(sys.argv[1:])
