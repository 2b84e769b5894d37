-- Audit queries by field, as on every environment's chain: indexed generated columns.
ALTER TABLE audit ADD COLUMN state TEXT GENERATED ALWAYS AS (record::jsonb ->> 'state') STORED;
ALTER TABLE audit ADD COLUMN principal TEXT GENERATED ALWAYS AS (record::jsonb ->> 'principal') STORED;
ALTER TABLE audit ADD COLUMN change TEXT GENERATED ALWAYS AS (record::jsonb ->> 'change') STORED;
CREATE INDEX audit_by_state ON audit (state, seq);
CREATE INDEX audit_by_principal ON audit (principal, seq);
CREATE INDEX audit_by_change ON audit (change, seq);
ALTER TABLE audit ADD COLUMN action TEXT GENERATED ALWAYS AS (record::jsonb ->> 'action') STORED;
ALTER TABLE audit ADD COLUMN decision TEXT GENERATED ALWAYS AS (record::jsonb ->> 'decision') STORED;
ALTER TABLE audit ADD COLUMN at TEXT GENERATED ALWAYS AS (record::jsonb ->> 'time') STORED;
CREATE INDEX audit_by_time ON audit (at);
