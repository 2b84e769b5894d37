-- The rest of the fields audit queries filter on, as indexed generated columns.
ALTER TABLE audit ADD COLUMN action TEXT GENERATED ALWAYS AS (record::jsonb ->> 'action') STORED;
ALTER TABLE audit ADD COLUMN decision TEXT GENERATED ALWAYS AS (record::jsonb ->> 'decision') STORED;
ALTER TABLE audit ADD COLUMN at TEXT GENERATED ALWAYS AS (record::jsonb ->> 'time') STORED;
CREATE INDEX audit_by_time ON audit (at);
