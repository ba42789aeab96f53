"""Nagios Core 4 (Debian's nagios4) running the same plugins at the same interval as healerd, for the exec
scenario: CPU of the daemon, its workers and the plugins they reaped."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ._system import taskset, tree_cpu_seconds

BINARY = "/usr/sbin/nagios4"

MAIN = """log_file={d}/nagios.log
cfg_file={d}/objects.cfg
object_cache_file={d}/objects.cache
precached_object_file={d}/objects.precache
resource_file={d}/resource.cfg
status_file={d}/status.dat
temp_file={d}/nagios.tmp
temp_path={d}/tmp
lock_file={d}/nagios.lock
check_result_path={d}/spool
state_retention_file={d}/retention.dat
retain_state_information=0
nagios_user={user}
nagios_group={group}
check_external_commands=0
interval_length=1
enable_notifications=0
enable_flap_detection=0
use_syslog=0
log_initial_states=0
log_service_retries=0
max_concurrent_checks=0
check_service_freshness=0
check_host_freshness=0
execute_host_checks=0
process_performance_data=1
service_perfdata_file={d}/perfdata
service_perfdata_file_template=$LASTSERVICECHECK$
service_perfdata_file_mode=a
"""

OBJECTS_HEAD = """define command {{
    command_name    probe
    command_line    {command}
}}
define timeperiod {{
    timeperiod_name always
    alias           always
    sunday 00:00-24:00
    monday 00:00-24:00
    tuesday 00:00-24:00
    wednesday 00:00-24:00
    thursday 00:00-24:00
    friday 00:00-24:00
    saturday 00:00-24:00
}}
define contact {{
    contact_name                  nobody
    host_notifications_enabled    0
    service_notifications_enabled 0
    host_notification_period      always
    service_notification_period   always
    host_notification_options     n
    service_notification_options  n
    host_notification_commands    probe
    service_notification_commands probe
}}
define host {{
    host_name             h0
    address               127.0.0.1
    check_command         probe
    max_check_attempts    1
    check_period          always
    active_checks_enabled 0
    contacts              nobody
    notification_period   always
    notifications_enabled 0
}}
"""

SERVICE = """define service {{
    host_name             h0
    service_description   s{i}
    check_command         probe
    max_check_attempts    3
    check_interval        {interval}
    retry_interval        {interval}
    check_period          always
    contacts              nobody
    notification_period   always
    notifications_enabled 0
}}
"""


class Nagios:
    """nagios4 in the foreground on a generated config: `services` services on one host, each running
    `command` (a plugin, no shell) every `interval` seconds."""

    def __init__(self, command: str, services: int, interval: int, core: int | None = 0) -> None:
        if not Path(BINARY).exists():
            raise FileNotFoundError(f"{BINARY} missing (apt-get install -y nagios4-core)")
        self.dir = Path(tempfile.mkdtemp(prefix="healerd-bench-nagios-"))
        user = "nagios" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        group = "nagios" if os.geteuid() == 0 else user
        for sub in ("tmp", "spool"):
            (self.dir / sub).mkdir()
        (self.dir / "resource.cfg").write_text("$USER1$=/usr/lib/nagios/plugins\n")
        (self.dir / "nagios.cfg").write_text(MAIN.format(d=self.dir, user=user, group=group))
        body = OBJECTS_HEAD.format(command=command)
        body += "".join(SERVICE.format(i=i, interval=interval) for i in range(services))
        (self.dir / "objects.cfg").write_text(body)
        (self.dir / "perfdata").touch()
        if os.geteuid() == 0:
            shutil.chown(self.dir, user, group)
            for path in self.dir.rglob("*"):
                shutil.chown(path, user, group)
        check = subprocess.run([BINARY, "-v", str(self.dir / "nagios.cfg")], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nagios4 refused the generated config:\n{check.stdout[-3000:]}")
        self.log = (self.dir / "stdout.log").open("w")
        self.proc = subprocess.Popen(
            [*taskset(core), BINARY, str(self.dir / "nagios.cfg")], stdout=self.log, stderr=subprocess.STDOUT
        )
        time.sleep(1)
        if self.proc.poll() is not None:
            raise RuntimeError(f"nagios4 exited {self.proc.returncode}: {(self.dir / 'nagios.log').read_text()}")

    def checks(self) -> int:
        """Service checks completed so far (one line each in the performance-data file)."""
        with (self.dir / "perfdata").open("rb") as f:
            return sum(1 for _ in f)

    def cpu(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
