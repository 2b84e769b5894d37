-- Dashboard sign-ins. The browser holds the session's secret; only its SHA-256 is kept here,
-- with the token it was signed in with, so that revoking the token ends the session.
CREATE TABLE ui_sessions (
    id         TEXT PRIMARY KEY,
    principal  TEXT NOT NULL,
    token_id   TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX ui_sessions_principal ON ui_sessions (principal, created_at);
CREATE INDEX ui_sessions_expiry ON ui_sessions (expires_at);
