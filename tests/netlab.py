"""Real network partitions for the tests: hosts in network namespaces behind one router namespace, where a cut
is a blackhole rule in the router, so a connection across it times out exactly as across a lost link.

Nothing leaves the machine: every address lives in namespaces the lab made (plus one veth into the test's own
namespace), the router knows no route but the lab's, and everything the lab made is removed by `close()`.

Address plan, inside one free private /16 (say 10.N.0.0/16):
    10.N.0.0/30          the test process (root namespace) .1 <-> router .2
    10.N.2i.0/23         host number i (1..127): its link 10.N.2i.0/24 (router .1, host .2) and its own
                         subnet 10.N.(2i+1).0/24 for `add_address`, e.g. one zone's machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

ROOT = "root"  # the name cuts use for the test process's own namespace
CUT_PRIORITY = 1000  # after the `local` table (0), before `main` (32766)
_BLOCKS = [ipaddress.IPv4Network(f"10.{n}.0.0/16") for n in range(200, 250)]
_ALLOCATION_LOCK = Path(tempfile.gettempdir()) / "healerd-netlab.lock"

Network = ipaddress.IPv4Network
Endpoint = str  # a host's name, ROOT, or an address or subnet ("10.200.3.7", "10.200.3.0/24")


class NetlabError(RuntimeError):
    """An `ip` command the lab needed failed; the message carries the command and what `ip` said."""


def ip(*args: str) -> str:
    """Run iproute2's `ip` and return its output; a failure raises NetlabError with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetlabError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


@functools.cache
def unavailable() -> str | None:
    """Why no lab can be built here (not root, no `ip netns`, namespaces refused), or None when one can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"netlab-probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
        ip("netns", "del", probe)
    except (OSError, NetlabError) as e:
        return f"`ip netns` does not work here: {e}"
    return None


def require_netlab() -> None:
    """Fail the test when no lab can be built under CI=true (a cut that silently never happens would pass
    everything); skip it elsewhere."""
    problem = unavailable()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


def _networks_in_use() -> list[Network]:
    """The IPv4 networks the root namespace has an address or a route in (the default route aside)."""
    found: list[Network] = []
    for link in json.loads(ip("-4", "-j", "addr", "show")):
        for a in link.get("addr_info", []):
            found.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for route in json.loads(ip("-4", "-j", "route", "show", "table", "all")):
        if route.get("dst", "default") != "default":
            found.append(ipaddress.IPv4Network(route["dst"], strict=False))
    return found


@dataclass
class Host:
    """One namespace of the lab: its link address, and the extra addresses `add_address` gave it."""

    name: str
    netns: str
    block: Network  # everything this host answers on: the cut unit
    address: str
    extra: list[str] = field(default_factory=list)


@dataclass
class _Cut:
    src: Network | None
    dst: Network | None

    def rule(self) -> list[str]:
        spec = ["pref", str(CUT_PRIORITY)]
        if self.src is not None:
            spec += ["from", str(self.src)]
        if self.dst is not None:
            spec += ["to", str(self.dst)]
        return [*spec, "blackhole"]


class Lab:
    """A router namespace and named hosts; `with Lab(["a", "b"]) as lab:` removes all of it at the end."""

    def __init__(self, hosts: Iterable[str] = ()) -> None:
        self.token = secrets.token_hex(3)
        self.router = f"netlab-{self.token}-router"
        self.hosts: dict[str, Host] = {}
        self._root_link = f"nl{self.token}"
        self._namespaces: list[str] = []
        self._processes: list[tuple[subprocess.Popen[Any], list[str]]] = []
        self._cuts: dict[tuple[Network | None, Network | None], _Cut] = {}
        self._network: Network | None = None
        try:
            self._build_router()
            for name in hosts:
                self.add_host(name)
        except BaseException:
            self.close()
            raise

    # -- building

    def _build_router(self) -> None:
        ip("netns", "add", self.router)
        self._namespaces.append(self.router)
        ip("-n", self.router, "link", "set", "lo", "up")
        # Forwarding in the router only: a per-namespace setting, the root namespace's stays as it is.
        ip("netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # Choosing the /16 and routing it from the root namespace happen under one lock, so two labs built at
        # once (parallel test workers) never pick the same one: the route is what the next one sees.
        with open(_ALLOCATION_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            in_use = _networks_in_use()
            free = [b for b in _BLOCKS if not any(b.overlaps(n) for n in in_use)]
            if not free:
                raise NetlabError(f"no free /16 among {_BLOCKS[0]}..{_BLOCKS[-1]} for a lab")
            net = self._network = free[0]
            root, router = str(net[1]), str(net[2])
            ip("link", "add", self._root_link, "type", "veth", "peer", "name", "root", "netns", self.router)
            ip("addr", "add", f"{root}/30", "dev", self._root_link)
            ip("link", "set", self._root_link, "up")
            ip("-n", self.router, "addr", "add", f"{router}/30", "dev", "root")
            ip("-n", self.router, "link", "set", "root", "up")
            ip("route", "add", str(net), "via", router, "dev", self._root_link)

    @property
    def network(self) -> Network:
        """The /16 every address of this lab is in."""
        assert self._network is not None
        return self._network

    @property
    def root_address(self) -> str:
        """The test process's address on the lab (what hosts see as the source of its connections)."""
        return str(self.network[1])

    def add_host(self, name: str) -> Host:
        """A new namespace `name` with one address, routed through the router; loopback is up inside."""
        if name in self.hosts or name == ROOT:
            raise ValueError(f"host name {name!r} is taken; pick another")
        index = len(self.hosts) + 1
        if index > 127:
            raise ValueError("a lab holds at most 127 hosts")
        base = self.network.network_address + (2 * index << 8)
        block = ipaddress.IPv4Network(f"{base}/23")
        gateway, address, netns = str(base + 1), str(base + 2), f"netlab-{self.token}-{name}"
        ip("netns", "add", netns)
        self._namespaces.append(netns)
        self.hosts[name] = host = Host(name, netns, block, address)
        ip("-n", netns, "link", "set", "lo", "up")
        link = f"h{index}"
        ip("-n", self.router, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("-n", self.router, "addr", "add", f"{gateway}/24", "dev", link)
        ip("-n", self.router, "link", "set", link, "up")
        ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        # Only the lab is routable from a host: anything else has nowhere to go.
        ip("-n", netns, "route", "add", str(self.network), "via", gateway)
        ip("-n", self.router, "route", "add", f"{base + 256}/24", "via", address)
        return host

    def add_address(self, host: str) -> str:
        """One more address on `host`, in its own subnet (say, the next machine of the zone it stands for)."""
        h = self.hosts[host]
        if len(h.extra) >= 254:
            raise ValueError(f"host {host!r} has no addresses left")
        address = str(h.block.network_address + 256 + len(h.extra) + 1)
        ip("-n", h.netns, "addr", "add", f"{address}/32", "dev", "eth0")
        h.extra.append(address)
        return address

    def address(self, host: str) -> str:
        return self.hosts[host].address

    def netns(self, host: str) -> str:
        return self.hosts[host].netns

    # -- processes

    def run(self, host: str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside `host`; `close()` ends it if it still runs and its command line is still `argv`
        (so run a program itself, not `sh -c "exec program"`)."""
        process: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[host].netns, *argv], **popen_kwargs
        )
        self._processes.append((process, list(argv)))
        return process

    def _end_processes(self) -> None:
        left: list[str] = []
        for process, argv in self._processes:
            if process.poll() is not None:
                continue
            # Not reaped yet, so its pid cannot have been given to anyone else; still, a process whose command
            # line no longer names what was started is not signalled, but reported.
            if not _names(process.pid, argv):
                left.append(f"pid {process.pid} (started as {' '.join(argv)!r}, its command line changed)")
            else:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
        if left:
            raise NetlabError("left running, end them yourself: " + "; ".join(left))

    # -- cuts

    def _networks(self, endpoint: Endpoint) -> Network:
        if endpoint == ROOT:
            return ipaddress.IPv4Network(f"{self.root_address}/32")
        if endpoint in self.hosts:
            return self.hosts[endpoint].block
        try:
            return ipaddress.IPv4Network(endpoint, strict=False)
        except ValueError:
            raise ValueError(f"{endpoint!r} is neither a host of this lab, {ROOT!r}, nor an address") from None

    def _add(self, cut: _Cut) -> None:
        if (cut.src, cut.dst) not in self._cuts:
            ip("-n", self.router, "rule", "add", *cut.rule())
            self._cuts[(cut.src, cut.dst)] = cut

    def _remove(self, cut: _Cut) -> None:
        if self._cuts.pop((cut.src, cut.dst), None) is not None:
            ip("-n", self.router, "rule", "del", *cut.rule())

    def cut(self, src: Endpoint, dst: Endpoint) -> None:
        """Drop, silently, every packet from `src` to `dst` (one direction: a TCP connect either way then
        times out, since its answer cannot come back)."""
        self._add(_Cut(self._networks(src), self._networks(dst)))

    def heal(self, src: Endpoint, dst: Endpoint) -> None:
        """Undo `cut(src, dst)`."""
        self._remove(_Cut(self._networks(src), self._networks(dst)))

    def isolate(self, host: Endpoint) -> None:
        """Cut `host` from every other host and from the test process, both ways."""
        block = self._networks(host)
        self._add(_Cut(block, None))
        self._add(_Cut(None, block))

    def rejoin(self, host: Endpoint) -> None:
        """Undo `isolate(host)`; cuts made with `cut` stay."""
        block = self._networks(host)
        self._remove(_Cut(block, None))
        self._remove(_Cut(None, block))

    # -- teardown

    def close(self) -> None:
        """End the processes this lab started, then remove its route, links and namespaces. Every step is tried
        even when one fails; the first failure is raised at the end."""
        errors: list[BaseException] = []
        steps = [self._end_processes, self._remove_root_link, *(self._delete_netns(n) for n in self._namespaces)]
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        self._namespaces, self._processes, self._cuts = [], [], {}
        if errors:
            raise errors[0]

    def _remove_root_link(self) -> None:
        # Deleting the link takes its addresses and the lab's route with it.
        if _link_exists(self._root_link):
            ip("link", "del", self._root_link)

    def _delete_netns(self, name: str) -> Callable[[], None]:
        def delete() -> None:
            if name in namespaces():
                ip("netns", "del", name)

        return delete

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def namespaces() -> set[str]:
    """The named network namespaces of the machine (`ip netns list`)."""
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, timeout=30).returncode == 0


def _names(pid: int, argv: list[str]) -> bool:
    """Whether /proc/<pid>/cmdline is `argv` (after `ip netns exec` replaced itself with it) or still the
    `ip netns exec ...` that leads to it; a script's interpreter may stand in front of the script."""
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        tail = argv[1:]
        if cmdline[len(cmdline) - len(tail) :] != tail:
            return False
        names = {Path(part).name for part in cmdline[: len(cmdline) - len(tail)]}
        return Path(argv[0]).name in names
    return False
