"""Open-file budget: every machine's network check holds a socket, so a fleet needs about one descriptor
per machine and check. healerd raises its soft RLIMIT_NOFILE to the hard limit at start, and a fleet that
cannot fit even then is refused at validation instead of breaking at run time."""

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


def budget_problem(sockets: int, hard: int | None = None) -> str | None:
    """Why `sockets` concurrent connections cannot fit under the hard limit (None when they fit)."""
    hard = limits()[1] if hard is None else hard
    if hard == resource.RLIM_INFINITY or sockets + RESERVE <= hard:
        return None
    return (
        f"{sockets} network checks need about {sockets + RESERVE} open files (one socket each, plus {RESERVE}); "
        f"the limit here is {hard}: raise it (systemd: LimitNOFILE= in the unit; a shell: ulimit -Hn) "
        "or check fewer machines per healerd"
    )
