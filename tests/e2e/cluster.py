"""A healerd cluster for the end-to-end tests: several real `healerd run` nodes on loopback sharing one database
on the throw-away PostgreSQL server, each with its own config file and log."""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import free_port

from .fleet import post_json
from .helpers import DaemonProcess, wait_until, write_config

TOKEN = "cluster-test-token"


class Node(DaemonProcess):
    def __init__(self, name: str, config_path: Path, port: int, log_path: Path) -> None:
        super().__init__(config_path, port, log_path)
        self.name = name

    def cluster(self) -> dict[str, Any]:
        view: dict[str, Any] = self.json("/api/v1/cluster")
        return view

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return post_json(self.url + path, body, headers={"Authorization": f"Bearer {TOKEN}"})


class ClusterRig:
    """`rig.start("a")` runs node `healerd-a` on `base` (a config dict) plus a cluster: section."""

    def __init__(self, tmp_path: Path, dsn: str, base: dict[str, Any], ttl: float = 3.0, confirm_from: int = 2) -> None:
        self.tmp_path = tmp_path
        self.dsn = dsn
        self.base = base
        self.ttl = ttl
        self.confirm_from = confirm_from
        self.nodes: dict[str, Node] = {}
        self.token_file = tmp_path / "api-token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)

    def config(self, name: str, port: int, change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        cfg = copy.deepcopy(self.base)
        cfg["daemon"]["listen"] = f"127.0.0.1:{port}"
        cfg["daemon"]["api_token_file"] = str(self.token_file)
        cfg["cluster"] = {
            "store": self.dsn,
            "node": f"healerd-{name}",
            "lease_ttl": f"{self.ttl:g}s",
            "confirm_from": self.confirm_from,
        }
        if change is not None:
            change(cfg)
        return cfg

    def start(self, name: str, wait: bool = True, change: Callable[[dict[str, Any]], None] | None = None) -> Node:
        old = self.nodes.get(name)
        port = old.port if old is not None else free_port()
        path = write_config(self.tmp_path / f"node-{name}.yaml", self.config(name, port, change))
        node = Node(name, path, port, self.tmp_path / f"node-{name}.log")
        self.nodes[name] = node
        node.start()
        if wait:
            node.wait_listening(20)
        return node

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.alive()]

    def view(self) -> dict[str, Any] | None:
        """The cluster as the first live node that answers sees it."""
        for node in self.live():
            with contextlib.suppress(OSError, AssertionError, json.JSONDecodeError):
                return node.cluster()
        return None

    def leader(self) -> Node | None:
        """The node that says it leads (by its own view: it holds the lease and its deadline has not passed)."""
        for node in self.live():
            with contextlib.suppress(OSError, AssertionError, json.JSONDecodeError):
                if node.cluster()["this_node_leads"]:
                    return node
        return None

    def wait_leader(self, timeout: float = 15.0, other_than: str | None = None) -> Node:
        def found() -> Node | None:
            node = self.leader()
            return node if node is not None and node.name != other_than else None

        leader: Node = wait_until(found, timeout, "a node to lead the cluster", interval=0.05, describe=self.describe)
        return leader

    def followers(self) -> list[Node]:
        leader = self.leader()
        return [n for n in self.live() if leader is None or n.name != leader.name]

    def stop(self, name: str) -> None:
        self.nodes[name].stop()

    def freeze(self, name: str) -> None:
        self.nodes[name].signal(signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        self.nodes[name].signal(signal.SIGCONT)

    def stop_all(self) -> list[str]:
        """Stop every node; returns what went wrong (a node that did not stop cleanly, a traceback)."""
        problems = []
        for node in self.nodes.values():
            with contextlib.suppress(ProcessLookupError):
                if node.alive():
                    node.signal(signal.SIGCONT)
            was_running = node.alive()
            status = node.stop(timeout=10)
            if was_running and status != 0:
                problems.append(f"node {node.name}: exit status {status} on SIGTERM\n{node.describe()}")
            elif "Traceback" in node.output():
                problems.append(f"node {node.name} logged a traceback\n{node.describe()}")
        return problems

    def describe(self) -> str:
        parts = [f"cluster view: {self.view()}"]
        for node in self.nodes.values():
            parts.append(f"--- node {node.name} ---\n{node.describe()[-3000:]}")
        return "\n".join(parts)

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_until(predicate, timeout, what, interval=0.1, describe=self.describe)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


def wait_delivered(rig: ClusterRig, leader: Node, timeout: float = 30.0) -> dict[str, Any]:
    """The leader's outbox once every message in it is delivered."""

    def settled() -> dict[str, Any] | None:
        view: dict[str, Any] = leader.json("/api/v1/notifications?limit=500")
        states = collections.Counter(m["state"] for m in view["messages"])
        return view if states and set(states) == {"delivered"} else None

    view: dict[str, Any] = rig.wait(settled, timeout, "every notification delivered")
    return view
