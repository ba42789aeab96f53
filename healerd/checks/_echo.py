"""ICMP echo for the `icmp` check: one socket per address family for the whole daemon, every reply handed to
the run that waits for it by the address pinged and the sequence number.

The socket is an unprivileged ICMP ("ping") socket where net.ipv4.ping_group_range lets the process's group
open one (the kernel then picks the identifier and passes this socket only the replies and errors carrying it),
a raw socket otherwise (root or CAP_NET_RAW: it sees every ICMP packet of the host, so the kernel is told to
pass only echo replies and errors, and those carrying another identifier are dropped at the first look).
A reply counts only when it comes from the address pinged, an error only when the request it quotes was sent
to that address: another host that has seen one request cannot answer, nor report unreachable, for a third.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from pathlib import Path

from .._neterrors import describe

#: ICMP types (IPv4, IPv6)
_ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
_ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
_UNREACHABLE = {socket.AF_INET: 3, socket.AF_INET6: 1}
_TIME_EXCEEDED = {socket.AF_INET: 11, socket.AF_INET6: 3}
_UNREACHABLE_CODES = {
    socket.AF_INET: {
        0: "network unreachable",
        1: "host unreachable",
        2: "protocol unreachable",
        3: "port unreachable",
        4: "fragmentation needed",
        6: "network unknown",
        7: "host unknown",
        9: "network administratively prohibited",
        10: "host administratively prohibited",
        13: "communication administratively prohibited",
    },
    socket.AF_INET6: {
        0: "no route to destination",
        1: "communication administratively prohibited",
        3: "address unreachable",
        4: "port unreachable",
        5: "source address failed policy",
        6: "reject route to destination",
    },
}
_PAYLOAD = b"healerd icmp....."[:16]
_SOL_RAW = 255
_ICMP_FILTER = 1  # linux/icmp.h: a bit set blocks that type on a raw IPv4 ICMP socket
_ICMP6_FILTER = 1  # linux/icmpv6.h: the same over 256 types on a raw ICMPv6 socket
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_MSG_ERRQUEUE = 0x2000
_EE_ORIGIN_ICMP = {socket.AF_INET: 2, socket.AF_INET6: 3}
_EXT_ERR = struct.Struct("=IBBBBII")
#: packets read per wake-up of the socket: a flood of ICMP at the host must not starve the event loop
_BATCH = 256
_FULL = "too many echo requests in flight"


class NoPrivilege(Exception):
    """Neither an unprivileged ICMP socket nor a raw one may be opened; the message says how to allow one."""


def privilege_fix() -> str:
    """How to let this process send ICMP echo requests, in the words of the setting to change."""
    gid = os.getgid()
    try:
        current = " ".join(Path("/proc/sys/net/ipv4/ping_group_range").read_text().split())
    except OSError:
        current = "unknown"
    return (
        f"this process (group {gid}) may open neither an unprivileged ICMP socket nor a raw one: add group {gid} "
        f"to net.ipv4.ping_group_range (now {current!r}), e.g. `sysctl -w net.ipv4.ping_group_range="
        f"'{gid} {gid}'` kept in /etc/sysctl.d/, or give healerd CAP_NET_RAW "
        "(`AmbientCapabilities=CAP_NET_RAW` in its systemd unit)"
    )


def open_socket(family: socket.AddressFamily) -> tuple[socket.socket, bool]:
    """A non-blocking ICMP socket of `family` and whether it is raw; NoPrivilege when none may be opened."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        raw = False
    except PermissionError:
        try:
            sock = socket.socket(family, socket.SOCK_RAW, proto)
        except PermissionError:
            raise NoPrivilege(privilege_fix()) from None
        raw = True
    try:
        sock.setblocking(False)
        if raw and family == socket.AF_INET:
            wanted = (1 << _ECHO_REPLY[family]) | (1 << _UNREACHABLE[family]) | (1 << _TIME_EXCEEDED[family])
            sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", ~wanted & 0xFFFFFFFF))
        elif raw:
            blocked = [0xFFFFFFFF] * 8
            for kind in (_ECHO_REPLY[family], _UNREACHABLE[family], _TIME_EXCEEDED[family]):
                blocked[kind >> 5] &= ~(1 << (kind & 31)) & 0xFFFFFFFF
            sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("=8I", *blocked))
        else:
            # errors about our requests (destination unreachable) come on the socket's error queue
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
    except BaseException:
        sock.close()
        raise
    return sock, raw


def _peer(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """The address of `sockaddr` as replies and errors name it (no zone, the kernel's spelling)."""
    family = socket.AF_INET if len(sockaddr) == 2 else socket.AF_INET6
    return socket.inet_ntop(family, socket.inet_pton(family, sockaddr[0].partition("%")[0]))


class Probe:
    """The echo requests of one run to one address: when each left, the round trips of the replies, what
    errors came back."""

    __slots__ = ("errors", "peer", "pending", "rtts", "sent", "seqs", "sockaddr", "waiter")

    def __init__(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], count: int, *, waiter: asyncio.Future[None]
    ) -> None:
        self.sockaddr = sockaddr
        self.peer = _peer(sockaddr)
        self.sent = [0.0] * count
        self.seqs: list[int] = []
        self.rtts: list[float] = []
        self.errors: list[str] = []
        self.pending = count
        self.waiter = waiter

    def _done_one(self) -> None:
        self.pending -= 1
        if self.pending <= 0 and not self.waiter.done():
            self.waiter.set_result(None)

    def reply(self, index: int, at: float) -> None:
        self.rtts.append(at - self.sent[index])
        self._done_one()

    def error(self, text: str) -> None:
        self.errors.append(text)
        self._done_one()


class EchoSocket:
    """One ICMP socket of one address family, shared by every `icmp` check of the daemon."""

    def __init__(self, family: socket.AddressFamily) -> None:
        self.family = family
        self.loop = asyncio.get_running_loop()
        self._sock, self.raw = open_socket(family)
        self._sendto = self._sock.sendto
        # an unprivileged socket's identifier is chosen by the kernel (and checked by it); a raw one's by us
        self._ident = random.randrange(1, 0x10000)
        # sequence numbers count per address pinged (one entry per address of the fleet): 65,536 may be in
        # flight to each, and a late reply after a wrap can only be taken for a request to the same address
        self._next_seq: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}  # per address: requests waiting; its counter goes with the last
        self._waiting: dict[tuple[str, int], tuple[Probe, int]] = {}
        self._v4 = family == socket.AF_INET
        self._reply_type = _ECHO_REPLY[family]
        header = struct.pack("!BBHHH", _ECHO_REQUEST[family], 0, 0, self._ident, 0) + _PAYLOAD
        self._template = bytearray(header)
        # the ones' complement sum of the request without its sequence: the checksum of any sequence follows
        words = struct.unpack(f"!{len(header) // 2}H", header)
        self._base_sum = sum(words)
        self.loop.add_reader(self._sock.fileno(), self._readable)

    @property
    def addresses(self) -> int:
        """How many addresses have requests waiting (what the socket's tables hold)."""
        return len(self._in_flight)

    def send(self, probe: Probe, index: int) -> None:
        """Send echo request `index` of `probe`; a local refusal (no route), or no sequence number free for its
        address, is that request's error."""
        peer = probe.peer
        seq = self._next_seq.get(peer)
        if seq is None:
            seq = random.randrange(0x10000)
        key = (peer, seq)
        waiting = self._waiting
        if key in waiting:  # still waiting for the request sent 65,536 before this one to the same address
            probe.error(_FULL)
            return
        self._next_seq[peer] = (seq + 1) & 0xFFFF
        packet = self._template
        packet[6] = seq >> 8
        packet[7] = seq & 0xFF
        if self.raw and self._v4:  # the kernel fills the checksum of the others
            total = self._base_sum + seq
            total = (total & 0xFFFF) + (total >> 16)
            total = (total & 0xFFFF) + (total >> 16)
            checksum = ~total & 0xFFFF
            packet[2] = checksum >> 8
            packet[3] = checksum & 0xFF
        waiting[key] = (probe, index)
        self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        probe.seqs.append(seq)
        probe.sent[index] = time.perf_counter()
        try:
            self._sendto(packet, probe.sockaddr)
        except OSError as exc:
            self._take(key)
            probe.error(describe(exc))

    def forget(self, probe: Probe) -> None:
        """Stop waiting for what `probe` has not received (its run is over)."""
        if probe.pending > 0:
            waiting = self._waiting
            peer = probe.peer
            for seq in probe.seqs:
                entry = waiting.get((peer, seq))
                if entry is not None and entry[0] is probe:
                    self._take((peer, seq))

    def _take(self, key: tuple[str, int]) -> tuple[Probe, int] | None:
        """The request waiting under `key`, no longer waited for; an address with none left is forgotten (its
        sequence starts afresh next time), so the tables hold only the addresses being pinged."""
        entry = self._waiting.pop(key, None)
        if entry is not None:
            peer = key[0]
            left = self._in_flight[peer] - 1
            if left:
                self._in_flight[peer] = left
            else:
                del self._in_flight[peer], self._next_seq[peer]
        return entry

    def _readable(self) -> None:
        # at most _BATCH packets, the rest on the next turn of the loop (the reader is called while any is left)
        recv = self._sock.recvfrom
        got = False
        for _ in range(_BATCH):
            try:
                data, source = recv(2048)
            except BlockingIOError:
                break
            except OSError:  # an ICMP error about one of our requests: its details are on the error queue
                self._read_errors()
                got = True
                continue
            got = True
            now = time.perf_counter()
            peer = source[0] if self._v4 else source[0].partition("%")[0]
            if self.raw:
                self._raw_packet(data, peer, now)
            elif data[0] == self._reply_type:
                entry = self._take((peer, (data[6] << 8) | data[7]))
                if entry is not None:
                    entry[0].reply(entry[1], now)
        if not got and not self.raw:
            self._read_errors()

    def _raw_packet(self, data: bytes, source: str, now: float) -> None:
        at = (data[0] & 15) * 4 if self._v4 else 0  # a raw IPv4 socket gets the IP header too
        kind = data[at]
        if kind == self._reply_type:
            if len(data) >= at + 8 and (data[at + 4] << 8) | data[at + 5] == self._ident:
                entry = self._take((source, (data[at + 6] << 8) | data[at + 7]))
                if entry is not None:
                    entry[0].reply(entry[1], now)
            return
        # an error: it quotes the IP header and the first 8 bytes of the request it is about
        inner = at + 8
        if self._v4:
            if len(data) < inner + 20 or data[inner + 9] != socket.IPPROTO_ICMP:
                return
            destination = socket.inet_ntop(socket.AF_INET, data[inner + 16 : inner + 20])
            inner += (data[inner] & 15) * 4
        else:
            if len(data) < inner + 40 or data[inner + 6] != socket.IPPROTO_ICMPV6:
                return
            destination = socket.inet_ntop(socket.AF_INET6, data[inner + 24 : inner + 40])
            inner += 40
        if len(data) < inner + 8 or data[inner] != _ECHO_REQUEST[self.family]:
            return
        if (data[inner + 4] << 8) | data[inner + 5] != self._ident:
            return
        self._error(destination, (data[inner + 6] << 8) | data[inner + 7], kind, data[at + 1], source)

    def _read_errors(self) -> None:
        """Read an unprivileged socket's error queue (at most _BATCH): the ICMP errors about our requests."""
        for _ in range(_BATCH):
            try:
                # the address is the destination of the request the error is about
                data, ancdata, _, address = self._sock.recvmsg(64, 512, _MSG_ERRQUEUE)
            except OSError:  # empty (EAGAIN)
                return
            if not address:
                continue
            for _, _, cmsg in ancdata:
                if len(cmsg) < _EXT_ERR.size or len(data) < 8:
                    continue
                _, origin, kind, code, _, _, _ = _EXT_ERR.unpack_from(cmsg)
                if origin != _EE_ORIGIN_ICMP[self.family]:
                    continue
                offender = cmsg[_EXT_ERR.size :]
                source = ""
                if self._v4 and len(offender) >= 8:
                    source = socket.inet_ntop(socket.AF_INET, offender[4:8])
                elif not self._v4 and len(offender) >= 24:
                    source = socket.inet_ntop(socket.AF_INET6, offender[8:24])
                self._error(address[0].partition("%")[0], (data[6] << 8) | data[7], kind, code, source)

    def _error(self, destination: str, seq: int, kind: int, code: int, source: str) -> None:
        entry = self._take((destination, seq))
        if entry is None:
            return
        if kind == _UNREACHABLE[self.family]:
            what = _UNREACHABLE_CODES[self.family].get(code, f"code {code}")
            text = f"destination unreachable ({what})"
        elif kind == _TIME_EXCEEDED[self.family]:
            text = "time to live exceeded in transit"
        else:
            text = f"ICMP error type {kind} code {code}"
        entry[0].error(f"{text} from {source}" if source else text)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._waiting.clear()
