-- Audit queries find records through this table rather than through indexes on the chain:
-- it is filled from the chain every few hundred records, so appending records writes the
-- chain's pages alone (the newest records and the head), not a page of each index too.
-- Queries read the few records appended since from the chain itself.
CREATE TABLE audit_index (
    seq       INTEGER PRIMARY KEY,
    state     TEXT,
    principal TEXT,
    change    TEXT,
    action    TEXT,
    decision  TEXT,
    at        TEXT
);
CREATE INDEX audit_index_by_state ON audit_index (state, seq);
CREATE INDEX audit_index_by_principal ON audit_index (principal, seq);
CREATE INDEX audit_index_by_change ON audit_index (change, seq) WHERE change IS NOT NULL;
CREATE INDEX audit_index_by_time ON audit_index (at);
CREATE TRIGGER audit_index_no_update BEFORE UPDATE ON audit_index
BEGIN SELECT RAISE(ABORT, 'the audit index is append-only'); END;
CREATE TRIGGER audit_index_no_delete BEFORE DELETE ON audit_index
BEGIN SELECT RAISE(ABORT, 'the audit index is append-only'); END;
INSERT INTO audit_index (seq, state, principal, change, action, decision, at)
SELECT seq, state, principal, change, action, decision, at FROM audit;
-- The chain's own fields become plain columns, which whoever appends a record fills in:
-- neither indexing nor queries parse records then. The records indexed above keep none.
DROP INDEX audit_by_state;
DROP INDEX audit_by_principal;
DROP INDEX audit_by_change;
DROP INDEX audit_by_time;
ALTER TABLE audit DROP COLUMN state;
ALTER TABLE audit DROP COLUMN principal;
ALTER TABLE audit DROP COLUMN change;
ALTER TABLE audit DROP COLUMN action;
ALTER TABLE audit DROP COLUMN decision;
ALTER TABLE audit DROP COLUMN at;
ALTER TABLE audit ADD COLUMN state TEXT;
ALTER TABLE audit ADD COLUMN principal TEXT;
ALTER TABLE audit ADD COLUMN change TEXT;
ALTER TABLE audit ADD COLUMN action TEXT;
ALTER TABLE audit ADD COLUMN decision TEXT;
ALTER TABLE audit ADD COLUMN at TEXT;
