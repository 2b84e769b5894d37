-- The chain's head follows every appended record, in the statement that appends it: an
-- append is then one statement, and the head cannot lag behind the records. The function
-- keeps the schema it was created in, whatever the session's search path.
CREATE FUNCTION audit_head_follows() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO audit_head (id, seq, hash) VALUES (1, NEW.seq, NEW.hash)
    ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_head_follows AFTER INSERT ON audit
FOR EACH ROW EXECUTE FUNCTION audit_head_follows();
