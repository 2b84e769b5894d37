-- The rest of the fields audit queries filter on, as indexed virtual columns.
ALTER TABLE audit ADD COLUMN action TEXT GENERATED ALWAYS AS (json_extract(record, '$.action')) VIRTUAL;
ALTER TABLE audit ADD COLUMN decision TEXT GENERATED ALWAYS AS (json_extract(record, '$.decision')) VIRTUAL;
ALTER TABLE audit ADD COLUMN at TEXT GENERATED ALWAYS AS (json_extract(record, '$.time')) VIRTUAL;
CREATE INDEX audit_by_time ON audit (at);
