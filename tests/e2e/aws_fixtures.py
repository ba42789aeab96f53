"""A local AWS for the AWS end-to-end tests: moto's ThreadedMotoServer on loopback, a recording (and
fault-injecting) reverse proxy in front of it, one fresh "world" (VPC, subnet, launch template v1/v2, target
group, Auto Scaling group, evidence bucket) per test, a health endpoint per instance, and `healerd run` with
test credentials.

Everything listens on 127.0.0.1. The daemon talks to AWS only through the proxy, which records every
operation as `<signing name>:<Action>` (what an IAM policy names) and can answer chosen requests with AWS
error documents (Throttling, UnauthorizedOperation, ...) instead of forwarding them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

import aiohttp
import boto3
from aiohttp import web
from botocore.config import Config as BotoConfig
from conftest import free_port

from .helpers import DaemonProcess, write_config

T = TypeVar("T")

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
#: the known-good version and the other one differ in instance type, so a replacement shows where it came from
TYPE_V1, TYPE_V2 = "t3.micro", "t3.small"
S3_PREFIX = "healerd/forensics/"


# ---------------------------------------------------------------------------------------------------------
# An asyncio loop in a thread: the proxy and the health endpoints run there, whatever the test does


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aws-e2e-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def serve(self, app: web.Application) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, port

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---------------------------------------------------------------------------------------------------------
# moto


class Moto:
    """ThreadedMotoServer on a free loopback port (one per test module)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            config=BotoConfig(retries={"max_attempts": 2, "mode": "standard"}, proxies={}),
            **CREDENTIALS,
        )

    def stop(self) -> None:
        self.server.stop()


# ---------------------------------------------------------------------------------------------------------
# The recording, fault-injecting proxy


@dataclass
class Call:
    """One request healerd made: `op` is `<signing name>:<Action>` as IAM names it."""

    service: str
    action: str
    ts: float
    params: dict[str, str]
    status: int = 0  # what healerd got back
    injected: str = ""  # the error code the proxy answered with instead of forwarding

    @property
    def op(self) -> str:
        return f"{self.service}:{self.action}"

    def ids(self) -> set[str]:
        """Instance ids named in the request (InstanceId, InstanceIds.member.N, Targets.member.N.Id, ...)."""
        return {v for k, v in self.params.items() if v.startswith("i-") and re.search(r"(Id|\.\d+)$", k)}


@dataclass
class Fault:
    """Answer matching requests with an AWS error instead of forwarding them.

    `times` errors in all; with `every=2` only every other matching request fails (each call is then
    throttled once and its botocore retry goes through). `when` filters on the request's parameters.
    """

    service: str
    code: str
    message: str
    action: str | None = None
    status: int = 400
    times: int = 1
    every: int = 1
    when: Callable[[dict[str, str]], bool] | None = None
    seen: int = 0
    injected: int = 0

    def take(self, service: str, action: str, params: dict[str, str]) -> bool:
        if service != self.service or (self.action is not None and action != self.action):
            return False
        if self.when is not None and not self.when(params):
            return False
        if self.injected >= self.times:
            return False
        self.seen += 1
        if (self.seen - 1) % self.every:
            return False
        self.injected += 1
        return True

    def body(self) -> bytes:
        if self.service == "ec2":
            doc = (
                f"<Response><Errors><Error><Code>{self.code}</Code><Message>{self.message}</Message></Error>"
                "</Errors><RequestID>healerd-e2e</RequestID></Response>"
            )
        else:
            doc = (
                f"<ErrorResponse><Error><Type>Sender</Type><Code>{self.code}</Code><Message>{self.message}</Message>"
                "</Error><RequestId>healerd-e2e</RequestId></ErrorResponse>"
            )
        return doc.encode()


_CREDENTIAL = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect"}


def _s3_action(method: str, path: str, query: str) -> str:
    parts = [p for p in unquote(path).split("/") if p]
    has_key = len(parts) >= 2
    if method == "PUT":
        return "PutObject" if has_key else "CreateBucket"
    if method in ("GET", "HEAD"):
        return "GetObject" if has_key else "ListBucket"
    if method == "DELETE":
        return "DeleteObject" if has_key else "DeleteBucket"
    return f"{method}?{query}"


class AwsProxy:
    """A reverse proxy healerd uses as its endpoint_url; one per test, all feeding `observed`."""

    def __init__(self, hub: LoopThread, upstream: str, observed: list[Call]) -> None:
        self.hub = hub
        self.upstream = upstream
        self.observed = observed
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        #: called with each forwarded call once AWS answered, before healerd gets the answer
        self.on_answer: Callable[[Call], None] | None = None
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.port = hub.run(hub.serve(app))
        self.url = f"http://127.0.0.1:{self.port}"

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def ops(self, since: int = 0) -> list[str]:
        with self._lock:
            return [c.op for c in self.calls[since:]]

    def find(self, op: str, instance: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.op == op and (instance is None or instance in c.ids())]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        m = _CREDENTIAL.search(request.headers.get("Authorization", ""))
        service = m.group(1) if m else "unsigned"
        params: dict[str, str] = {}
        if service == "s3":
            action = _s3_action(request.method, request.path, request.query_string)
            params = {"Path": unquote(request.path)}
        else:
            params = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
            action = params.get("Action", f"{request.method} {request.path}")
        call = Call(service, action, time.time(), params)
        with self._lock:
            self.calls.append(call)
            self.observed.append(call)
            fault = next((f for f in self.faults if f.take(service, action, params)), None)
        if fault is not None:
            call.status, call.injected = fault.status, fault.code
            return web.Response(status=fault.status, body=fault.body(), content_type="text/xml")
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP and k.lower() != "content-length"}
        headers["Host"] = request.headers.get("Host", f"127.0.0.1:{self.port}")
        async with self._session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent", "Accept"),
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP and k.lower() != "content-length"}
        call.status = resp.status
        if self.on_answer is not None:
            self.on_answer(call)
        return web.Response(status=resp.status, body=data, headers=out)

    def close(self) -> None:
        async def _close() -> None:
            await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        self.hub.run(_close())


# ---------------------------------------------------------------------------------------------------------
# Health endpoints: GET /health/{instance_id} answers 200 unless the instance is marked failing


class HealthServer:
    def __init__(self, hub: LoopThread) -> None:
        self.hub = hub
        self.failing: set[str] = set()
        self.hits: dict[str, list[tuple[float, int]]] = {}
        app = web.Application()
        app.router.add_get("/health/{id}", self._health)
        self._runner, self.port = hub.run(hub.serve(app))
        self.url = f"http://127.0.0.1:{self.port}/health/{{id}}"

    async def _health(self, request: web.Request) -> web.Response:
        iid = request.match_info["id"]
        status = 500 if iid in self.failing else 200
        self.hits.setdefault(iid, []).append((time.time(), status))
        return web.Response(status=status, text="broken" if status == 500 else "ok")

    def ok_before(self, iid: str, ts: float) -> int:
        return sum(1 for t, s in list(self.hits.get(iid, [])) if s == 200 and t <= ts)

    def close(self) -> None:
        self.hub.run(self._runner.cleanup())


# ---------------------------------------------------------------------------------------------------------
# One test's AWS world


@dataclass
class World:
    """VPC, subnet, launch template (v1 t3.micro, v2 t3.small, two EBS volumes each), target group, Auto
    Scaling group on v1 with desired 3 registered in the target group, and an evidence bucket."""

    moto: Moto
    desired: int = 3
    max_size: int = 6
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.ec2 = self.moto.client("ec2")
        self.asg_client = self.moto.client("autoscaling")
        self.elbv2 = self.moto.client("elbv2")
        self.s3 = self.moto.client("s3")
        net = int(self.name[:2], 16) % 250 + 1
        self.vpc = self.ec2.create_vpc(CidrBlock=f"10.{net}.0.0/16")["Vpc"]["VpcId"]
        self.subnet = self.ec2.create_subnet(
            VpcId=self.vpc, CidrBlock=f"10.{net}.1.0/24", AvailabilityZone=f"{REGION}a"
        )["Subnet"]["SubnetId"]
        image = self.ec2.describe_images()["Images"][0]["ImageId"]

        def data(instance_type: str) -> dict[str, Any]:
            return {
                "ImageId": image,
                "InstanceType": instance_type,
                "NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": self.subnet}],
                # moto's RunInstances ignores the template's NetworkInterfaces (a replacement lands in the
                # default VPC) but applies its tags: instances of this world are found by this tag
                "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "e2e:world", "Value": self.name}]}],
                "BlockDeviceMappings": [
                    {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8, "DeleteOnTermination": True}},
                    {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 4, "DeleteOnTermination": False}},
                ],
            }

        self.lt = self.ec2.create_launch_template(
            LaunchTemplateName=f"web-{self.name}", LaunchTemplateData=data(TYPE_V1)
        )["LaunchTemplate"]["LaunchTemplateId"]
        self.ec2.create_launch_template_version(LaunchTemplateId=self.lt, LaunchTemplateData=data(TYPE_V2))
        self.tg = self.elbv2.create_target_group(
            Name=f"web-{self.name}", Protocol="HTTP", Port=8080, VpcId=self.vpc, TargetType="instance"
        )["TargetGroups"][0]["TargetGroupArn"]
        self.asg = f"web-asg-{self.name}"
        self.asg_client.create_auto_scaling_group(
            AutoScalingGroupName=self.asg,
            LaunchTemplate={"LaunchTemplateId": self.lt, "Version": "1"},
            MinSize=0,
            MaxSize=self.max_size,
            DesiredCapacity=self.desired,
            TargetGroupARNs=[self.tg],
            VPCZoneIdentifier=self.subnet,
        )
        self.bucket = f"evidence-{self.name}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.original = self.asg_instances()
        assert len(self.original) == self.desired, self.original

    # -- views --------------------------------------------------------------------------------------------
    def group(self) -> dict[str, Any]:
        return dict(
            self.asg_client.describe_auto_scaling_groups(AutoScalingGroupNames=[self.asg])["AutoScalingGroups"][0]
        )

    def asg_instances(self) -> list[str]:
        return sorted(i["InstanceId"] for i in self.group()["Instances"])

    def instance(self, iid: str) -> dict[str, Any]:
        return dict(self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0])

    def instances(self, filters: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        flt = [{"Name": "tag:e2e:world", "Values": [self.name]}, *(filters or [])]
        return [i for r in self.ec2.describe_instances(Filters=flt)["Reservations"] for i in r["Instances"]]

    def tags(self, iid: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.instance(iid).get("Tags", [])}

    def targets(self) -> dict[str, str]:
        """Instance id -> target state, as the target group reports it."""
        out = self.elbv2.describe_target_health(TargetGroupArn=self.tg)["TargetHealthDescriptions"]
        return {d["Target"]["Id"]: d["TargetHealth"]["State"] for d in out}

    def replacements(self, incident: str, quarantined: str) -> list[dict[str, Any]]:
        """Live instances launched for `incident` (tagged with it) other than the quarantined one."""
        found = self.instances(
            [
                {"Name": "tag:healerd:incident", "Values": [incident]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
        return [i for i in found if i["InstanceId"] != quarantined]

    def launched_by_healerd(self) -> list[dict[str, Any]]:
        return self.instances([{"Name": "tag-key", "Values": ["healerd:machine"]}])

    def add_eni(self, iid: str) -> str:
        """A second network interface on an instance (quarantine must isolate every one)."""
        eni = self.ec2.create_network_interface(SubnetId=self.subnet)["NetworkInterface"]["NetworkInterfaceId"]
        self.ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=iid, DeviceIndex=1)
        return str(eni)

    def dump(self) -> str:
        with contextlib.suppress(Exception):
            return json.dumps(
                {
                    "asg": self.asg_instances(),
                    "desired": self.group()["DesiredCapacity"],
                    "targets": self.targets(),
                    "instances": {
                        i["InstanceId"]: {
                            "state": i["State"]["Name"],
                            "type": i["InstanceType"],
                            "tags": {t["Key"]: t["Value"] for t in i.get("Tags", [])},
                        }
                        for i in self.instances()
                    },
                },
                indent=1,
                default=str,
            )
        return "(world unavailable)"


# ---------------------------------------------------------------------------------------------------------
# healerd


def check(url: str, interval: str = "300ms") -> dict[str, Any]:
    return {
        "name": "health",
        "kind": "http",
        "url": url,
        "interval": interval,
        "timeout": "250ms",
        "fall": 3,
        "rise": 2,
    }


def healerd_config(
    world: World, endpoint: str, health_url: str, state_dir: Path, port: int, **provider: Any
) -> dict[str, Any]:
    return {
        "daemon": {
            "listen": f"127.0.0.1:{port}",
            "state_dir": str(state_dir),
            "log_format": "console",
            "log_level": "info",
            "mode": "auto",
            "check_paths": [],
            "playbook_paths": [str(PLAYBOOKS)],
        },
        "providers": {
            "prod": {
                "kind": "aws",
                "region": REGION,
                "endpoint_url": endpoint,
                "s3": {"bucket": world.bucket, "prefix": S3_PREFIX},
                **provider,
            }
        },
        "images": {
            "web-lt": {
                "provider": "prod",
                "versions": {
                    "v1": {"launch_template": {"id": world.lt, "version": "1"}},
                    "v2": {"launch_template": {"id": world.lt, "version": "2"}},
                },
                "known_good": "v1",
            }
        },
        "services": {
            "web": {
                "provider": "prod",
                "image": "web-lt",
                "desired": world.desired,
                "min_healthy": 2,
                "discovery": {"asg": world.asg},
                "rotation": {
                    "kind": "elbv2",
                    "target_group_arns": [world.tg],
                    "port": 8080,
                    "drain_timeout": "20s",
                    "healthy_timeout": "20s",
                },
                "checks": [check(health_url)],
                "remediation": {"max_per_hour": 20},
            }
        },
    }


class AwsDaemon(DaemonProcess):
    """`healerd run` with test AWS credentials, no proxies, and `--crash-at` only when asked."""

    def __init__(self, config_path: Path, port: int, log_path: Path, crash_at: str | None) -> None:
        super().__init__(config_path, port, log_path, ("--crash-at", crash_at) if crash_at else ())

    def environment(self) -> dict[str, str]:
        drop = {"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"}
        env = {k: v for k, v in super().environment().items() if k not in drop and "proxy" not in k.lower()}
        env.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
            NO_PROXY="127.0.0.1,localhost",
        )
        return env

    def post(self, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


@dataclass
class Healerd:
    """healerd for one world: its config, its daemons (restartable), its store (read-only)."""

    world: World
    proxy: AwsProxy
    health: HealthServer
    tmp_path: Path
    provider: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    daemons: list[AwsDaemon] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_dir = self.tmp_path / "state"
        self.config_path = self.tmp_path / "healerd.yaml"
        self.config = healerd_config(
            self.world, self.proxy.url, self.health.url, self.state_dir, self.port, **self.provider
        )
        write_config(self.config_path, self.config)

    @property
    def daemon(self) -> AwsDaemon:
        return self.daemons[-1]

    def start(self, crash_at: str | None = None, wait: str = "ready") -> AwsDaemon:
        d = AwsDaemon(self.config_path, self.port, self.tmp_path / f"healerd-{len(self.daemons)}.log", crash_at)
        self.daemons.append(d)
        d.start()
        if wait == "ready":
            d.wait_ready(20)
        else:
            d.wait_listening(20)
        return d

    def stop(self) -> list[str]:
        """Stop every daemon; returns the problems of those that did not stop cleanly."""
        unclean = []
        for d in self.daemons:
            was_running = d.alive()
            status = d.stop()
            if was_running and (status != 0 or "Traceback" in d.output()):
                unclean.append(f"{d.log_path.name}: exit status {status} on SIGTERM\n{d.describe()}")
        return unclean

    # -- the store, read-only -----------------------------------------------------------------------------
    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = self.state_dir / "state.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    def incidents(self) -> list[dict[str, Any]]:
        rows = self.query("SELECT id, machine, state, replacement, error FROM incidents ORDER BY opened_at")
        return [dict(zip(("id", "machine", "state", "replacement", "error"), r, strict=True)) for r in rows]

    def incident(self) -> dict[str, Any] | None:
        found = self.incidents()
        return found[-1] if found else None

    def steps(self, incident: str) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT idx, action, state, attempts, started_at, ended_at, error FROM steps WHERE incident=? ORDER BY idx",
            (incident,),
        )
        keys = ("index", "action", "state", "attempts", "started_at", "ended_at", "error")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def lifecycle(self, mid: str) -> str | None:
        rows = self.query("SELECT lifecycle FROM machines WHERE id=?", (mid,))
        return str(rows[0][0]) if rows else None

    def describe(self) -> str:
        inc = self.incident()
        return (
            f"incidents: {self.incidents()}\nsteps: {self.steps(inc['id']) if inc else []}\n"
            f"world: {self.world.dump()}\nAWS calls: {self.proxy.ops()[-60:]}\n"
            + "\n".join(d.describe()[-4000:] for d in self.daemons[-2:])
        )


def _matches(pattern: str, value: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(value.lower(), pattern.lower())


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def allowing_statements(op: str, policy: dict[str, Any], resource: str | None = None) -> list[dict[str, Any]]:
    """The Allow statements of an IAM policy that name `op` (`service:Action`, wildcards * and ?) and, when
    `resource` (an ARN) is given, a matching Resource. EVIDENCE-BUCKET, the policy's placeholder, matches any
    bucket. Conditions are left to the caller."""
    out = []
    for st in policy.get("Statement", []):
        if st.get("Effect") != "Allow":
            continue
        if not any(a == "*" or _matches(a, op) for a in _list(st.get("Action", []))):
            continue
        if resource is not None and not any(
            _matches(str(r).replace("EVIDENCE-BUCKET", "*"), resource) for r in _list(st.get("Resource", "*"))
        ):
            continue
        out.append(st)
    return out


def unique(items: Iterable[str]) -> list[str]:
    return sorted(set(items))
