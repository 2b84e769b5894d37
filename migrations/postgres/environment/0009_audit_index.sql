-- Audit queries find records through this table rather than through indexes on the chain:
-- it is filled from the chain every few hundred records, so appending records writes the
-- chain's pages alone (the newest records and the head), not a page of each index too.
-- Queries read the few records appended since from the chain itself.
CREATE TABLE audit_index (
    seq       BIGINT PRIMARY KEY,
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
CREATE TRIGGER audit_index_append_only BEFORE UPDATE OR DELETE ON audit_index
FOR EACH ROW EXECUTE FUNCTION refuse_change('the audit index');
INSERT INTO audit_index (seq, state, principal, change, action, decision, at)
SELECT seq, state, principal, change, action, decision, at FROM audit;
-- The chain's own fields become plain columns, which whoever appends a record fills in.
DROP INDEX audit_by_state;
DROP INDEX audit_by_principal;
DROP INDEX audit_by_change;
DROP INDEX audit_by_time;
ALTER TABLE audit ALTER COLUMN state DROP EXPRESSION;
ALTER TABLE audit ALTER COLUMN principal DROP EXPRESSION;
ALTER TABLE audit ALTER COLUMN change DROP EXPRESSION;
ALTER TABLE audit ALTER COLUMN action DROP EXPRESSION;
ALTER TABLE audit ALTER COLUMN decision DROP EXPRESSION;
ALTER TABLE audit ALTER COLUMN at DROP EXPRESSION;
