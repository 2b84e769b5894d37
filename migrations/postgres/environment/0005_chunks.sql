-- State content in chunks of at most 1 MiB, so that large states are written and served
-- without whole copies in memory. Versions written before keep theirs in versions.content.
CREATE TABLE content_chunks (
    state   TEXT   NOT NULL,
    version BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    data    BYTEA  NOT NULL,
    PRIMARY KEY (state, version, seq)
);
CREATE TRIGGER content_chunks_append_only BEFORE UPDATE OR DELETE ON content_chunks
FOR EACH ROW EXECUTE FUNCTION refuse_change('state versions');
CREATE TRIGGER content_chunks_no_truncate BEFORE TRUNCATE ON content_chunks
FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('state versions');

-- Each version's resource instances (address -> digest of its attributes), taken when it is
-- written, so that history counts what changed without reading every version's content.
ALTER TABLE versions ADD COLUMN resources TEXT;
