"""The SQLite schema: one migration per version, applied in order by `PRAGMA user_version`."""

from __future__ import annotations

# Each entry migrates from version i to i+1; never edit a shipped one, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE machines (
        service TEXT NOT NULL, id TEXT NOT NULL, address TEXT NOT NULL, lifecycle TEXT NOT NULL,
        provider TEXT NOT NULL DEFAULT '', attributes TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (service, id)
    );
    CREATE TABLE results (
        service TEXT NOT NULL, machine TEXT NOT NULL, check_name TEXT NOT NULL, slot INTEGER NOT NULL,
        seq INTEGER NOT NULL, ts REAL NOT NULL, status INTEGER NOT NULL, message TEXT NOT NULL,
        duration REAL NOT NULL, metrics TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (service, machine, check_name, slot)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, ts REAL NOT NULL, type TEXT NOT NULL,
        service TEXT NOT NULL, machine TEXT, check_name TEXT, incident TEXT, severity TEXT NOT NULL,
        status TEXT NOT NULL, summary TEXT NOT NULL, details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_machine ON events (service, machine, seq);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY, service TEXT NOT NULL, machine TEXT NOT NULL, state TEXT NOT NULL,
        playbook TEXT NOT NULL, opened_at REAL NOT NULL, updated_at REAL NOT NULL, resolved_at REAL,
        summary TEXT NOT NULL, replacement TEXT, error TEXT, details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX incidents_open ON incidents (state, service);
    CREATE TABLE steps (
        incident TEXT NOT NULL, idx INTEGER NOT NULL, action TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, ended_at REAL, outputs TEXT NOT NULL DEFAULT '{}',
        error TEXT, PRIMARY KEY (incident, idx)
    );
    CREATE TABLE images (family TEXT PRIMARY KEY, known_good TEXT NOT NULL, seeded TEXT NOT NULL,
                         updated_at REAL NOT NULL);
    CREATE TABLE silences (
        id TEXT PRIMARY KEY, service TEXT, machine TEXT, starts_at REAL NOT NULL, ends_at REAL NOT NULL,
        comment TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE remediation_log (service TEXT NOT NULL, machine TEXT NOT NULL, ts REAL NOT NULL,
                                  kind TEXT NOT NULL, incident TEXT);
    CREATE INDEX remediation_log_service ON remediation_log (service, ts);
    """,
    """
    CREATE TABLE outbox_items (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, notifier TEXT NOT NULL, service TEXT NOT NULL, event TEXT NOT NULL,
        created_at REAL NOT NULL, message TEXT
    );
    CREATE INDEX outbox_items_waiting ON outbox_items (message, notifier, service);
    CREATE TABLE outbox (
        id TEXT PRIMARY KEY, notifier TEXT NOT NULL, service TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        delivered_at REAL, payload TEXT NOT NULL, last_status INTEGER, last_error TEXT, events INTEGER NOT NULL
    );
    CREATE INDEX outbox_pending ON outbox (notifier, state, created_at);
    """,
    # image promotion: every version's state (known-good, candidate, rejected, retired) and the rollouts
    """
    CREATE TABLE image_versions (
        family TEXT NOT NULL, version TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
        promoted_by TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL, evidence TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (family, version)
    );
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY, service TEXT NOT NULL, image TEXT NOT NULL, version TEXT NOT NULL,
        previous TEXT NOT NULL, stage TEXT NOT NULL, active INTEGER NOT NULL, paused INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '', started_at REAL NOT NULL, updated_at REAL NOT NULL, ended_at REAL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX rollouts_service ON rollouts (service, started_at);
    """,
    # history for the status page: check results and service state in time buckets (machine='' for the service)
    """
    CREATE TABLE history (
        service TEXT NOT NULL, machine TEXT NOT NULL, check_name TEXT NOT NULL, bucket REAL NOT NULL,
        width INTEGER NOT NULL, runs INTEGER NOT NULL DEFAULT 0, ok INTEGER NOT NULL DEFAULT 0,
        warning INTEGER NOT NULL DEFAULT 0, critical INTEGER NOT NULL DEFAULT 0, unknown INTEGER NOT NULL DEFAULT 0,
        dur_sum REAL NOT NULL DEFAULT 0, up_s REAL NOT NULL DEFAULT 0, down_s REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (service, machine, check_name, bucket)
    );
    CREATE INDEX history_age ON history (bucket);
    """,
    # an incident a human acknowledged: who, when, what they said
    """
    ALTER TABLE incidents ADD COLUMN acked_at REAL;
    ALTER TABLE incidents ADD COLUMN acked_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE incidents ADD COLUMN ack_comment TEXT NOT NULL DEFAULT '';
    """,
)


def statements(script: str) -> list[str]:
    """The statements of a migration script, one by one."""
    return [s.strip() for s in script.split(";") if s.strip()]
