-- Audit queries by field, as on every environment's chain: indexed virtual columns.
ALTER TABLE audit ADD COLUMN state TEXT GENERATED ALWAYS AS (json_extract(record, '$.state')) VIRTUAL;
ALTER TABLE audit ADD COLUMN principal TEXT GENERATED ALWAYS AS (json_extract(record, '$.principal')) VIRTUAL;
ALTER TABLE audit ADD COLUMN change TEXT GENERATED ALWAYS AS (json_extract(record, '$.change')) VIRTUAL;
CREATE INDEX audit_by_state ON audit (state, seq);
CREATE INDEX audit_by_principal ON audit (principal, seq);
CREATE INDEX audit_by_change ON audit (change, seq);
ALTER TABLE audit ADD COLUMN action TEXT GENERATED ALWAYS AS (json_extract(record, '$.action')) VIRTUAL;
ALTER TABLE audit ADD COLUMN decision TEXT GENERATED ALWAYS AS (json_extract(record, '$.decision')) VIRTUAL;
ALTER TABLE audit ADD COLUMN at TEXT GENERATED ALWAYS AS (json_extract(record, '$.time')) VIRTUAL;
CREATE INDEX audit_by_time ON audit (at);
