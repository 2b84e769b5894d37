-- Where each state lineage has been seen: a lineage that turns up in a second place is a state
-- copied where it does not belong.
CREATE TABLE lineages (
    lineage     TEXT NOT NULL,
    environment TEXT NOT NULL,
    state       TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    PRIMARY KEY (lineage, environment, state)
);
