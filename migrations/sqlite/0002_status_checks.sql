-- Status and policy names are checked by the database, not only by the code that writes them.
-- SQLite cannot add a CHECK to an existing table, so each table is rebuilt with the same columns
-- in the same order, its rows copied, and its indexes recreated (sqlx runs this in a transaction).

CREATE TABLE tables_new (
    name        TEXT PRIMARY KEY,
    drift       TEXT NOT NULL CHECK (drift IN ('evolve', 'rescue', 'discard_value', 'discard_row', 'freeze')),
    columns     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1    -- one more with every change; replicas compare it
);
INSERT INTO tables_new (name, drift, columns, created_at, updated_at)
    SELECT name, drift, columns, created_at, updated_at FROM tables;
DROP TABLE tables;
ALTER TABLE tables_new RENAME TO tables;

CREATE TABLE batches_new (
    id               TEXT PRIMARY KEY,
    table_name       TEXT NOT NULL,
    partner          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('staged', 'loading', 'loaded', 'rejected', 'failed')),
    received         INTEGER NOT NULL,
    accepted         INTEGER NOT NULL,
    rejected         INTEGER NOT NULL,
    loaded           INTEGER NOT NULL DEFAULT 0,
    rejects_by_code  TEXT NOT NULL DEFAULT '{}',
    received_at      TEXT NOT NULL,
    staged_at        TEXT,
    loaded_at        TEXT,
    error            TEXT,
    CHECK (received >= 0 AND accepted >= 0 AND rejected >= 0 AND loaded >= 0)
);
INSERT INTO batches_new
    SELECT id, table_name, partner, status, received, accepted, rejected, loaded, rejects_by_code,
           received_at, staged_at, loaded_at, error
    FROM batches;
DROP TABLE batches;
ALTER TABLE batches_new RENAME TO batches;
CREATE INDEX batches_table ON batches (table_name, id);
CREATE INDEX batches_status ON batches (status, id);
CREATE INDEX batches_partner ON batches (partner, id);

CREATE TABLE rejects_new (
    batch_id  TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    record    TEXT NOT NULL,
    errors    TEXT NOT NULL,
    stage     TEXT NOT NULL CHECK (stage IN ('gateway', 'warehouse')),
    PRIMARY KEY (batch_id, idx)
);
INSERT INTO rejects_new SELECT batch_id, idx, record, errors, stage FROM rejects;
DROP TABLE rejects;
ALTER TABLE rejects_new RENAME TO rejects;

CREATE TABLE files_new (
    id           TEXT PRIMARY KEY,
    table_name   TEXT NOT NULL,
    path         TEXT NOT NULL UNIQUE,
    rows         INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    status       TEXT NOT NULL
                 CHECK (status IN ('pending', 'staged', 'loading', 'loaded', 'failed', 'abandoned')),
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
INSERT INTO files_new
    SELECT id, table_name, path, rows, bytes, status, attempts, claimed_by, lease_until, not_before,
           query_id, rows_loaded, error, created_at, loaded_at
    FROM files;
DROP TABLE files;
ALTER TABLE files_new RENAME TO files;
CREATE INDEX files_status ON files (status, created_at);
