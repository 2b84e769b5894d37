-- State content in chunks of at most 1 MiB, so that large states are written and served
-- without whole copies in memory. Versions written before keep theirs in versions.content.
CREATE TABLE content_chunks (
    state   TEXT    NOT NULL,
    version INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    data    BLOB    NOT NULL,
    PRIMARY KEY (state, version, seq)
);
CREATE TRIGGER content_chunks_no_update BEFORE UPDATE ON content_chunks
BEGIN SELECT RAISE(ABORT, 'state versions are append-only'); END;
CREATE TRIGGER content_chunks_no_delete BEFORE DELETE ON content_chunks
BEGIN SELECT RAISE(ABORT, 'state versions are append-only'); END;

-- Each version's resource instances (address -> digest of its attributes), taken when it is
-- written, so that history counts what changed without reading every version's content.
ALTER TABLE versions ADD COLUMN resources TEXT;
