-- The change request a version was written under.
ALTER TABLE versions ADD COLUMN change_number INTEGER;

-- Audit queries by field without parsing every record: indexed virtual columns.
ALTER TABLE audit ADD COLUMN state TEXT GENERATED ALWAYS AS (json_extract(record, '$.state')) VIRTUAL;
ALTER TABLE audit ADD COLUMN principal TEXT GENERATED ALWAYS AS (json_extract(record, '$.principal')) VIRTUAL;
ALTER TABLE audit ADD COLUMN change TEXT GENERATED ALWAYS AS (json_extract(record, '$.change')) VIRTUAL;
CREATE INDEX audit_by_state ON audit (state, seq);
CREATE INDEX audit_by_principal ON audit (principal, seq);
CREATE INDEX audit_by_change ON audit (change, seq);
