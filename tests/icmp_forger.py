"""A forger of ICMP for the icmp check's tests, run as root inside a lab namespace whose kernel no longer answers
echo requests itself: it watches the echo requests on the namespace's loopback and, for each, sends back from
--source either an echo reply carrying the request's identifier and sequence (--reply) or a "host unreachable"
quoting the request with its destination replaced by --about (--unreachable). What a host on the path, or any
host that has seen one request, could send.

Prints `ready` once it listens."""

from __future__ import annotations

import argparse
import asyncio
import socket

from icmp_responder import checksum


def unreachable(request: bytes, about: str) -> bytes:
    quoted = bytearray(request[: (request[0] & 15) * 4 + 8])
    quoted[16:20] = socket.inet_aton(about)
    packet = bytearray([3, 1, 0, 0, 0, 0, 0, 0]) + quoted
    packet[2:4] = checksum(bytes(packet)).to_bytes(2, "big")
    return bytes(packet)


def reply(request: bytes) -> bytes:
    packet = bytearray(request[(request[0] & 15) * 4 :])
    packet[0], packet[2], packet[3] = 0, 0, 0
    packet[2:4] = checksum(bytes(packet)).to_bytes(2, "big")
    return bytes(packet)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--reply", action="store_true")
    parser.add_argument("--unreachable", action="store_true")
    parser.add_argument("--about", default="")
    args = parser.parse_args()
    listen = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    listen.setblocking(False)
    send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    send.bind((args.source, 0))
    loop = asyncio.get_running_loop()

    def readable() -> None:
        while True:
            try:
                data, (source, _) = listen.recvfrom(2048)
            except BlockingIOError:
                return
            if data[(data[0] & 15) * 4] != 8:  # echo requests only, not what this forger sends
                continue
            if args.reply:
                send.sendto(reply(data), (source, 0))
            if args.unreachable:
                send.sendto(unreachable(data, args.about), (source, 0))

    loop.add_reader(listen.fileno(), readable)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
