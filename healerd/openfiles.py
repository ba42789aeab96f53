"""Open-file budget: every machine's network check holds a socket while it runs, and keeps it between runs
(keep-alive). healerd raises its soft RLIMIT_NOFILE to the hard limit at start. A config whose checks that
may run at once could not get a socket even then is refused at validation instead of breaking at run time;
one whose fleet is larger than the room left for kept-alive connections runs (the overflow connects anew
on each run) and is warned about."""

from __future__ import annotations

import resource

#: descriptors kept for everything else: the API's listener and clients, the store, logs, plugins' pipes
RESERVE = 256


def limits() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft limit to the hard one; returns (before, after)."""
    soft, hard = limits()
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def split(max_concurrent: int, limit: int) -> tuple[int, int]:
    """(connections in use at once, idle kept-alive connections) that fit under `limit` open files: one per
    check that may run at once (daemon.max_concurrent_checks), at most half of what the reserve leaves; the
    rest for idle connections, one per host checked."""
    budget = max(128, limit - RESERVE)
    in_use = max(16, min(max_concurrent, budget // 2))
    return in_use, budget - in_use


def budget_problem(sockets: int, max_concurrent: int = 5000, hard: int | None = None) -> str | None:
    """Why the checks that may run at once cannot fit under the hard limit (None when they fit)."""
    hard = limits()[1] if hard is None else hard
    at_once = min(sockets, max_concurrent)
    if hard == resource.RLIM_INFINITY or at_once + RESERVE <= hard:
        return None
    return (
        f"{sockets} network checks need about {at_once + RESERVE} open files (one socket each for the "
        f"{at_once} that may run at once, plus {RESERVE}); the limit here is {hard}: raise it (systemd: "
        "LimitNOFILE= in the unit; a shell: ulimit -Hn), lower daemon.max_concurrent_checks, or check fewer "
        "machines per healerd"
    )


def keepalive_shortfall(sockets: int, max_concurrent: int = 5000, hard: int | None = None) -> str | None:
    """A warning when not every network check can keep its connection alive between runs."""
    hard = limits()[1] if hard is None else hard
    if hard == resource.RLIM_INFINITY:
        return None
    room = split(max_concurrent, hard)[1]
    if sockets <= room:
        return None
    return (
        f"{sockets} network checks, but the open-file limit ({hard}) leaves room to keep {room} connections "
        f"alive between runs: the other {sockets - room} connect anew on every run (more CPU per check); "
        "raise the limit (systemd: LimitNOFILE=) to keep them all"
    )
