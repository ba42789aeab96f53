"""A ping responder for the icmp check's tests, run inside a lab namespace whose kernel no longer answers echo
requests itself (net.ipv4.icmp_echo_ignore_all=1): it answers them late (--delay) or leaves some unanswered
(--drop-every N: the Nth of every N requests), so a slow or lossy link is real without sch_netem.

Prints `ready` once it listens."""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--drop-every", type=int, default=0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    seen = 0

    def readable() -> None:
        nonlocal seen
        while True:
            try:
                data, (source, _) = sock.recvfrom(2048)
            except BlockingIOError:
                return
            icmp = data[(data[0] & 15) * 4 :]
            if icmp[0] != 8:  # echo requests only
                continue
            seen += 1
            if args.drop_every and seen % args.drop_every == 0:
                continue
            reply = bytearray(icmp)
            reply[0], reply[2], reply[3] = 0, 0, 0
            reply[2:4] = struct.pack("!H", checksum(bytes(reply)))
            loop.call_later(args.delay, sock.sendto, bytes(reply), (source, 0))

    loop.add_reader(sock.fileno(), readable)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
