-- One environment's states, locks and audit chain, in a schema of its own.
-- Versions and audit records are append-only.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_ARGV[0];
END
$$;

CREATE TABLE versions (
    state      TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    sha256     TEXT   NOT NULL,
    serial     BIGINT,
    lineage    TEXT,
    size       BIGINT NOT NULL,
    principal  TEXT   NOT NULL,
    operation  TEXT,
    lock_id    TEXT,
    forced     BIGINT NOT NULL DEFAULT 0,
    deleted    BIGINT NOT NULL DEFAULT 0,
    created_at TEXT   NOT NULL,
    content    BYTEA,
    PRIMARY KEY (state, version)
);
CREATE TRIGGER versions_append_only BEFORE UPDATE OR DELETE ON versions
FOR EACH ROW EXECUTE FUNCTION refuse_change('state versions');
CREATE TRIGGER versions_no_truncate BEFORE TRUNCATE ON versions
FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('state versions');

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
