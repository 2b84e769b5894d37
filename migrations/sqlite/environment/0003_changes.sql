-- Change requests to this environment, their approvals, and break-glass grants.
CREATE TABLE changes (
    number          INTEGER PRIMARY KEY,
    state           TEXT NOT NULL,
    title           TEXT NOT NULL,
    author          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    plan_sha256     TEXT NOT NULL,
    summary         TEXT NOT NULL,
    branch          TEXT,
    commit_sha      TEXT,
    status          TEXT NOT NULL DEFAULT 'open',
    closed_at       TEXT,
    closed_by       TEXT,
    reason          TEXT,
    applied_version INTEGER
);

CREATE TABLE approvals (
    change_number INTEGER NOT NULL REFERENCES changes (number),
    approver      TEXT NOT NULL,
    approved_at   TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    PRIMARY KEY (change_number, approver)
);

CREATE TABLE breakglass (
    number     INTEGER PRIMARY KEY,
    principal  TEXT NOT NULL,
    reason     TEXT NOT NULL,
    opened_at  TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    closed_at  TEXT,
    closed_by  TEXT
);

-- The change a lock was taken for; consumed when the lock ends after a write.
ALTER TABLE locks ADD COLUMN change_number INTEGER;
