-- Records are chained with a keyed MAC from here on. A chain begun before holds records linked
-- by plain SHA-256: this marks where that part ends (the head now), and the server, at its
-- first start with the key, verifies the part and signs the mark (`mac`). A chain begun after
-- has no mark: every record is keyed.
CREATE TABLE audit_seal (
    id        BIGINT PRIMARY KEY CHECK (id = 1),
    seq       BIGINT NOT NULL,
    hash      TEXT   NOT NULL,
    mac       TEXT,
    sealed_at TEXT
);
INSERT INTO audit_seal (id, seq, hash) SELECT 1, seq, hash FROM audit_head;
CREATE TRIGGER audit_seal_once BEFORE UPDATE ON audit_seal
FOR EACH ROW WHEN (OLD.mac IS NOT NULL) EXECUTE FUNCTION refuse_change('the audit seal');
CREATE TRIGGER audit_seal_no_delete BEFORE DELETE ON audit_seal
FOR EACH ROW EXECUTE FUNCTION refuse_change('the audit seal');
