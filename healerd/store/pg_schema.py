"""The PostgreSQL schema: the same tables as SQLite's (so the repositories serve both), plus the cluster's
lease and nodes, and the change stamps the other nodes follow machines and results by.

Each entry migrates from version i to i+1 (`healerd_schema`); never edit a shipped one, append a new one.
Migrations run under a transaction-scoped advisory lock, so nodes starting together migrate once (and
PgBouncer's transaction pooling keeps working: no session lock is held).
"""

from __future__ import annotations

#: rows of `machines` and `results` carry (txid, rid, node): the transaction that wrote them, a change number
#: and the writing node. A follower reads what changed after its cursor, among transactions that have all
#: ended (txid below the snapshot's xmin), so no row committed late is ever skipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE SEQUENCE healerd_change_seq;
    CREATE FUNCTION healerd_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.txid := pg_current_xact_id();
        NEW.rid := nextval('healerd_change_seq');
        NEW.node := split_part(current_setting('application_name'), '/', 2);
        RETURN NEW;
    END $$;
    CREATE TABLE machines (
        service TEXT NOT NULL, id TEXT NOT NULL, address TEXT NOT NULL, lifecycle TEXT NOT NULL,
        provider TEXT NOT NULL DEFAULT '', attributes TEXT NOT NULL DEFAULT '{}',
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(), rid BIGINT NOT NULL DEFAULT 0, node TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (service, id)
    );
    CREATE INDEX machines_changes ON machines (txid, rid);
    CREATE TRIGGER machines_stamp BEFORE INSERT OR UPDATE ON machines FOR EACH ROW EXECUTE FUNCTION healerd_stamp();
    CREATE TABLE results (
        service TEXT NOT NULL, machine TEXT NOT NULL, check_name TEXT NOT NULL, slot INTEGER NOT NULL,
        seq BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL, status INTEGER NOT NULL, message TEXT NOT NULL,
        duration DOUBLE PRECISION NOT NULL, metrics TEXT NOT NULL DEFAULT '[]',
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(), rid BIGINT NOT NULL DEFAULT 0, node TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (service, machine, check_name, slot)
    );
    CREATE INDEX results_changes ON results (txid, rid);
    CREATE TRIGGER results_stamp BEFORE INSERT OR UPDATE ON results FOR EACH ROW EXECUTE FUNCTION healerd_stamp();
    CREATE TABLE events (
        seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, ts DOUBLE PRECISION NOT NULL, type TEXT NOT NULL,
        service TEXT NOT NULL, machine TEXT, check_name TEXT, incident TEXT, severity TEXT NOT NULL,
        status TEXT NOT NULL, summary TEXT NOT NULL, details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_machine ON events (service, machine, seq);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY, service TEXT NOT NULL, machine TEXT NOT NULL, state TEXT NOT NULL,
        playbook TEXT NOT NULL, opened_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        resolved_at DOUBLE PRECISION, summary TEXT NOT NULL, replacement TEXT, error TEXT,
        details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX incidents_open ON incidents (state, service);
    CREATE TABLE steps (
        incident TEXT NOT NULL, idx INTEGER NOT NULL, action TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, started_at DOUBLE PRECISION, ended_at DOUBLE PRECISION,
        outputs TEXT NOT NULL DEFAULT '{}', error TEXT, PRIMARY KEY (incident, idx)
    );
    CREATE TABLE images (family TEXT PRIMARY KEY, known_good TEXT NOT NULL, seeded TEXT NOT NULL,
                         updated_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE silences (
        id TEXT PRIMARY KEY, service TEXT, machine TEXT, starts_at DOUBLE PRECISION NOT NULL,
        ends_at DOUBLE PRECISION NOT NULL, comment TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE remediation_log (service TEXT NOT NULL, machine TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL,
                                  kind TEXT NOT NULL, incident TEXT);
    CREATE INDEX remediation_log_service ON remediation_log (service, ts);
    CREATE TABLE outbox_items (
        seq BIGSERIAL PRIMARY KEY, notifier TEXT NOT NULL, service TEXT NOT NULL, event TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, message TEXT
    );
    CREATE INDEX outbox_items_waiting ON outbox_items (message, notifier, service);
    CREATE TABLE outbox (
        id TEXT PRIMARY KEY, notifier TEXT NOT NULL, service TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL, next_attempt_at DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, delivered_at DOUBLE PRECISION, payload TEXT NOT NULL,
        last_status INTEGER, last_error TEXT, events INTEGER NOT NULL
    );
    CREATE INDEX outbox_pending ON outbox (notifier, state, created_at);
    CREATE TABLE cluster_lease (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL,
        acquired_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE cluster_nodes (
        node TEXT PRIMARY KEY, advertise TEXT NOT NULL, version TEXT NOT NULL, started_at TIMESTAMPTZ NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL, machines INTEGER NOT NULL DEFAULT 0, checks INTEGER NOT NULL DEFAULT 0
    );
    """,
    # the machines a node alone sees down (the others up), as the leader last found: the node's own view
    """
    ALTER TABLE cluster_nodes ADD COLUMN disputed INTEGER NOT NULL DEFAULT 0;
    """,
    # image promotion: every version's state (known-good, candidate, rejected, retired) and the rollouts
    """
    CREATE TABLE image_versions (
        family TEXT NOT NULL, version TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
        promoted_by TEXT NOT NULL DEFAULT '', updated_at DOUBLE PRECISION NOT NULL, evidence TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (family, version)
    );
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY, service TEXT NOT NULL, image TEXT NOT NULL, version TEXT NOT NULL,
        previous TEXT NOT NULL, stage TEXT NOT NULL, active INTEGER NOT NULL, paused INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '', started_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX rollouts_service ON rollouts (service, started_at);
    """,
    # history for the status page: check results and service state in time buckets (machine='' for the service)
    """
    CREATE TABLE history (
        service TEXT NOT NULL, machine TEXT NOT NULL, check_name TEXT NOT NULL, bucket DOUBLE PRECISION NOT NULL,
        width INTEGER NOT NULL, runs INTEGER NOT NULL DEFAULT 0, ok INTEGER NOT NULL DEFAULT 0,
        warning INTEGER NOT NULL DEFAULT 0, critical INTEGER NOT NULL DEFAULT 0, unknown INTEGER NOT NULL DEFAULT 0,
        dur_sum DOUBLE PRECISION NOT NULL DEFAULT 0, up_s DOUBLE PRECISION NOT NULL DEFAULT 0,
        down_s DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (service, machine, check_name, bucket)
    );
    CREATE INDEX history_age ON history (bucket);
    """,
    # an incident a human acknowledged: who, when, what they said
    """
    ALTER TABLE incidents ADD COLUMN acked_at DOUBLE PRECISION;
    ALTER TABLE incidents ADD COLUMN acked_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE incidents ADD COLUMN ack_comment TEXT NOT NULL DEFAULT '';
    """,
)
