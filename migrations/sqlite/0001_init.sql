-- snowgate ledger, SQLite flavour. Times are RFC 3339 UTC text with microseconds, so they sort.

CREATE TABLE tables (
    name        TEXT PRIMARY KEY,
    drift       TEXT NOT NULL,
    columns     TEXT NOT NULL,          -- JSON array of {name, type, nullable}
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE schema_changes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name   TEXT NOT NULL,
    column_name  TEXT NOT NULL,
    column_type  TEXT NOT NULL,
    batch_id     TEXT,
    at           TEXT NOT NULL
);
CREATE INDEX schema_changes_table ON schema_changes (table_name, id);
CREATE INDEX schema_changes_batch ON schema_changes (batch_id);

CREATE TABLE batches (
    id               TEXT PRIMARY KEY,  -- UUIDv7: sorts by time
    table_name       TEXT NOT NULL,
    partner          TEXT NOT NULL,
    status           TEXT NOT NULL,
    received         INTEGER NOT NULL,
    accepted         INTEGER NOT NULL,
    rejected         INTEGER NOT NULL,
    loaded           INTEGER NOT NULL DEFAULT 0,
    rejects_by_code  TEXT NOT NULL DEFAULT '{}',
    received_at      TEXT NOT NULL,
    staged_at        TEXT,
    loaded_at        TEXT,
    error            TEXT
);
CREATE INDEX batches_table ON batches (table_name, id);
CREATE INDEX batches_status ON batches (status, id);
CREATE INDEX batches_partner ON batches (partner, id);

CREATE TABLE rejects (
    batch_id  TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    record    TEXT NOT NULL,
    errors    TEXT NOT NULL,
    stage     TEXT NOT NULL,
    PRIMARY KEY (batch_id, idx)
);

CREATE TABLE files (
    id           TEXT PRIMARY KEY,
    table_name   TEXT NOT NULL,
    path         TEXT NOT NULL UNIQUE,
    rows         INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    claimed_by   TEXT,
    lease_until  TEXT,
    not_before   TEXT,
    query_id     TEXT,
    rows_loaded  INTEGER,
    error        TEXT,
    created_at   TEXT NOT NULL,
    loaded_at    TEXT
);
CREATE INDEX files_status ON files (status, created_at);

CREATE TABLE file_batches (
    file_id   TEXT NOT NULL,
    batch_id  TEXT NOT NULL,
    rows      INTEGER NOT NULL,
    PRIMARY KEY (file_id, batch_id)
);
CREATE INDEX file_batches_batch ON file_batches (batch_id);
