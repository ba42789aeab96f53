"""The cluster's PostgreSQL failing over under a remediation, N times in a row:

    python -m bench.failover --runs 20 --kind kill          # SIGKILL the primary, promote the standby
    python -m bench.failover --runs 20 --kind switchover    # stop it cleanly, promote, old one a standby

Two healerd nodes on a multi-host connection string, a primary and its synchronous streaming standby (the
tests' pair, tests/pgpair.py). Each run breaks a machine and fails the database over while the machine is
being replaced (the rounds of tests/e2e/test_store_failover.py). Per run: the time from the primary's death
to a leader renewing the lease on the new primary (and how much of it the failover itself took), the
machines launched, the lease's epoch, and the messages to on-call lost or received twice; then a summary.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# the tests' rigs: the PostgreSQL pair, the cluster of real nodes, the webhook receiver
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from e2e.fleet import kill_demos
from e2e.test_alerting import Loopback, Receiver
from e2e.test_store_failover import TTL, Round, fail_over, failover_cluster, messages
from pgpair import pg_pair


def log(msg: str) -> None:
    print(f"[failover {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kind", choices=("kill", "switchover"), default="kill")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="healerd-bench-failover-"))
    loopback = Loopback()
    receiver = loopback.serve(Receiver())
    rounds: list[Round] = []
    failures: list[str] = []
    lost_total = twice_total = 0
    try:
        with pg_pair() as pair:
            rig = failover_cluster(tmp, pair, receiver)
            try:
                for name in "ab":
                    rig.start(name)
                log(f"{args.runs} runs of {args.kind}; lease_ttl {TTL:g}s; two nodes; synchronous standby")
                for run in range(1, args.runs + 1):
                    try:
                        figures = fail_over(rig, pair, args.kind, tmp)
                        sent, lost, twice = messages(receiver, rig)
                    except AssertionError as exc:
                        failures.append(f"run {run}: {str(exc).splitlines()[0]}")
                        log(f"run {run:2d}: FAILED {failures[-1]}")
                        continue
                    rounds.append(figures)
                    new_lost, new_twice = lost - lost_total, twice - twice_total
                    lost_total, twice_total = lost, twice
                    log(
                        f"run {run:2d}: leader writes {figures.recovery:5.2f}s after the primary's death "
                        f"(failover {figures.promoted:4.2f}s, healerd {figures.recovery - figures.promoted:4.2f}s); "
                        f"replacements {figures.replacements}; epoch {figures.epochs[0]}->{figures.epochs[1]}; "
                        f"messages lost {new_lost}, twice {new_twice} (outbox {sent}); "
                        f"healerd sessions on the old primary {figures.old_sessions}; new 25006 lines "
                        f"{figures.read_only_lines}"
                    )
            finally:
                problems = rig.stop_all()
                kill_demos(str(tmp))
                for problem in problems:
                    log(problem.splitlines()[0])
    finally:
        loopback.close()
        shutil.rmtree(tmp, ignore_errors=True)

    if not rounds:
        log("no run completed")
        return 1
    recovery = [r.recovery for r in rounds]
    after = [r.recovery - r.promoted for r in rounds]
    replacements = collections.Counter(r.replacements for r in rounds)
    print(
        f"\n{args.kind}: {len(rounds)} of {args.runs} runs completed (lease_ttl {TTL:g}s)\n"
        f"  leader writes after the primary's death: median {statistics.median(recovery):.2f}s, "
        f"max {max(recovery):.2f}s (bound lease_ttl + 5 = {TTL + 5:g}s)\n"
        f"  of which after the failover was done:    median {statistics.median(after):.2f}s, max {max(after):.2f}s\n"
        f"  replacements per incident: {dict(sorted(replacements.items()))}\n"
        f"  leadership moved (epoch grew): {sum(1 for r in rounds if r.epochs[1] > r.epochs[0])} runs; "
        f"epoch went backwards: {sum(1 for r in rounds if r.epochs[1] < r.epochs[0])} runs\n"
        f"  messages to on-call: lost {lost_total}, received twice {twice_total}\n"
        f"  healerd sessions left on the old primary: {sum(r.old_sessions for r in rounds)}; "
        f"25006 lines after settling: {sum(r.read_only_lines for r in rounds)}\n"
        f"  failed runs: {len(failures)}" + "".join(f"\n    {f}" for f in failures)
    )
    return 0 if not failures and set(replacements) == {1} and lost_total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
