"""A healerd cluster inside a network lab (tests/netlab.py): node `n` runs as `healerd run` inside lab host `n`,
listens and is advertised on that host's address, and is reached there by the test, so a cut between hosts
is a cut between a node and whatever it checks, probes or stores in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import free_port
from netlab import Lab

from healerd.access import Scope, add

from .cluster import ClusterRig, Node
from .helpers import write_config


class LabNode(Node):
    """A node started inside lab host `host` (its process is the lab's too: `lab.close()` ends it if need be)."""

    def __init__(self, name: str, config_path: Path, port: int, log_path: Path, *, lab: Lab, host: str) -> None:
        super().__init__(name, config_path, port, log_path)
        self.lab = lab
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.lab.address(self.host)}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> LabNode:
        with self.log_path.open("ab") as log:
            self.proc = self.lab.run(
                self.host,
                [sys.executable, "-m", "healerd", "run", "-c", str(self.config_path), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.log_path.parent,
            )
        return self


class LabCluster(ClusterRig):
    """`rig.start("n1")` runs node `healerd-n1` in lab host `n1`, in zone `zones["n1"]` (cluster.zone)."""

    def __init__(
        self,
        lab: Lab,
        tmp_path: Path,
        dsn: str,
        base: dict[str, Any],
        *,
        zones: dict[str, str],
        ttl: float = 3.0,
        confirm_from: int = 2,
    ) -> None:
        super().__init__(tmp_path, dsn, base, ttl=ttl, confirm_from=confirm_from)
        self.lab = lab
        self.zones = zones
        # the nodes call each other with a named `cluster` credential, not one shared admin token: a probe
        # that credential could not make would leave every zone loss unconfirmed
        self.access_file = tmp_path / "access.yaml"
        self.cluster_token_file = tmp_path / "cluster-token"
        self.cluster_token_file.write_text(add(self.access_file, "nodes", Scope.CLUSTER) + "\n")

    def config(self, name: str, port: int, change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        def placed(cfg: dict[str, Any]) -> None:
            cfg["daemon"]["listen"] = f"{self.lab.address(name)}:{port}"
            del cfg["daemon"]["api_token_file"]
            cfg["daemon"]["access_file"] = str(self.access_file)
            cfg["cluster"]["token_file"] = str(self.cluster_token_file)
            cfg["cluster"]["zone"] = self.zones.get(name, "")
            if change is not None:
                change(cfg)

        return super().config(name, port, placed)

    def start(self, name: str, wait: bool = True, change: Callable[[dict[str, Any]], None] | None = None) -> LabNode:
        old = self.nodes.get(name)
        port = old.port if old is not None else free_port()  # the host's own namespace: any port is free there
        path = write_config(self.tmp_path / f"node-{name}.yaml", self.config(name, port, change))
        node = LabNode(name, path, port, self.tmp_path / f"node-{name}.log", lab=self.lab, host=name)
        self.nodes[name] = node
        node.start()
        if wait:
            node.wait_listening(20)
        return node
