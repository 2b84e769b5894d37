-- The chain's head follows every appended record, in the statement that appends it: an
-- append is then one statement, and the head cannot lag behind the records.
CREATE TRIGGER audit_head_follows AFTER INSERT ON audit
BEGIN
    INSERT INTO audit_head (id, seq, hash) VALUES (1, NEW.seq, NEW.hash)
    ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
END;
