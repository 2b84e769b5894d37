-- When the holder of a lock last showed it is alive: set when the lock is taken, renewed by a
-- LOCK retry of the holder and by every write under the lock. An environment's `lock_lease`
-- lets another writer take over a lock idle for longer.
ALTER TABLE locks ADD COLUMN active_at TEXT;
UPDATE locks SET active_at = created_at;
