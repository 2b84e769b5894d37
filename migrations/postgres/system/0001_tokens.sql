-- Server-wide records: API tokens (hashes only).
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    principal  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
