-- Keeping state accurate. A version keeps what its state says of itself beyond attribute values
-- (terraform_version, providers, tainted and deposed instances, failed checks: JSON), which the
-- next write is compared with.
ALTER TABLE versions ADD COLUMN facts TEXT;

-- Signals, computed from what the backend saw on a write or at a lock's release, each with its
-- evidence. A warning is open until someone acknowledges it with a reason, or, for a condition
-- of the newest version (tainted instances, failed checks), until a later version is without
-- it. A notice is recorded and shown, never open. Numbered per environment from 1.
CREATE TABLE signals (
    id              BIGINT NOT NULL PRIMARY KEY,
    state           TEXT NOT NULL,
    kind            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    evidence        TEXT NOT NULL,
    -- The version whose write raised it; NULL for a lock's release.
    version         BIGINT,
    principal       TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    resolved_by     BIGINT,
    resolved_at     TEXT,
    acknowledged_by TEXT,
    acknowledged_at TEXT,
    reason          TEXT
);
CREATE INDEX signals_state ON signals (state, id);

-- Drift reports: what the pipeline's refresh-only plans found, each drifted resource with the
-- attributes that differ (sensitive values masked) and since when it has been reported. The
-- newest few per state are kept; drift_states keeps what outlives them.
CREATE TABLE drift_reports (
    id                BIGINT NOT NULL PRIMARY KEY,
    state             TEXT NOT NULL,
    principal         TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    plan_sha256       TEXT NOT NULL,
    terraform_version TEXT,
    count             BIGINT NOT NULL,
    drifted           TEXT NOT NULL
);
CREATE INDEX drift_reports_state ON drift_reports (state, id);

-- Each state's drift as its newest report says: since when it has drifted, when it was last
-- reported clean, and who acknowledged the drift now reported (cleared when it changes).
CREATE TABLE drift_states (
    state           TEXT NOT NULL PRIMARY KEY,
    report_id       BIGINT NOT NULL,
    reported_at     TEXT NOT NULL,
    count           BIGINT NOT NULL,
    drifted_since   TEXT,
    clean_at        TEXT,
    acknowledged_by TEXT,
    acknowledged_at TEXT,
    reason          TEXT
);
