-- One environment's states, locks and audit chain. Versions and audit records are append-only.
CREATE TABLE versions (
    state      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    sha256     TEXT    NOT NULL,
    serial     INTEGER,
    lineage    TEXT,
    size       INTEGER NOT NULL,
    principal  TEXT    NOT NULL,
    operation  TEXT,
    lock_id    TEXT,
    forced     INTEGER NOT NULL DEFAULT 0,
    deleted    INTEGER NOT NULL DEFAULT 0,
    created_at TEXT    NOT NULL,
    content    BLOB,
    PRIMARY KEY (state, version)
);
CREATE TRIGGER versions_no_update BEFORE UPDATE ON versions
BEGIN SELECT RAISE(ABORT, 'state versions are append-only'); END;
CREATE TRIGGER versions_no_delete BEFORE DELETE ON versions
BEGIN SELECT RAISE(ABORT, 'state versions are append-only'); END;

CREATE TABLE locks (
    state      TEXT PRIMARY KEY,
    lock_id    TEXT NOT NULL,
    principal  TEXT NOT NULL,
    operation  TEXT NOT NULL,
    info       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Plan locks of principals who may read but not write: granted, never blocking.
CREATE TABLE read_locks (
    lock_id    TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    principal  TEXT NOT NULL,
    created_at TEXT NOT NULL
);
