-- What an approval covers. A change keeps the fingerprint of its plan's effect (digests under
-- the server's plan key, never a value); its revision, which `change update` moves on, dismissing
-- the approvals of the revision before; the pipeline identity that attested it applies that
-- effect; and the resource addresses written under it beyond its plan. A version keeps the
-- addresses it wrote beyond the plan of the change it was written under.
ALTER TABLE changes ADD COLUMN fingerprint TEXT;
ALTER TABLE changes ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
ALTER TABLE changes ADD COLUMN attested_by TEXT;
ALTER TABLE changes ADD COLUMN attested_branch TEXT;
ALTER TABLE changes ADD COLUMN attested_subject TEXT;
ALTER TABLE changes ADD COLUMN attested_at TEXT;
ALTER TABLE changes ADD COLUMN diverged TEXT;
ALTER TABLE versions ADD COLUMN beyond_plan TEXT;
