-- A column widened in place by a re-declaration (a longer VARCHAR, a wider NUMBER) is audited
-- with the type it had; NULL for a column that was added.
ALTER TABLE schema_changes ADD COLUMN previous_type TEXT;

-- Isolating the rows the warehouse refuses: a file with such a row is split in halves, new files
-- whose `parent_id` names it, and ends `split`; a part of one row that the warehouse refuses ends
-- `rejected` (its row is a reject of its batch). SQLite cannot change a CHECK, so the table is
-- rebuilt with its columns in the same order, its rows copied, and its index recreated.
CREATE TABLE files_new (
    id                  TEXT PRIMARY KEY,
    table_name          TEXT NOT NULL,
    path                TEXT NOT NULL UNIQUE,
    rows                INTEGER NOT NULL,
    bytes               INTEGER NOT NULL,
    status              TEXT NOT NULL CHECK (status IN
                            ('pending', 'staged', 'loading', 'loaded', 'failed', 'abandoned', 'split', 'rejected')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    claimed_by          TEXT,
    lease_until         TEXT,
    not_before          TEXT,
    query_id            TEXT,
    rows_loaded         INTEGER,
    error               TEXT,
    created_at          TEXT NOT NULL,
    loaded_at           TEXT,
    statement_failures  INTEGER NOT NULL DEFAULT 0,
    columns             TEXT,
    parent_id           TEXT
);
INSERT INTO files_new (id, table_name, path, rows, bytes, status, attempts, claimed_by, lease_until,
                       not_before, query_id, rows_loaded, error, created_at, loaded_at,
                       statement_failures, columns)
    SELECT id, table_name, path, rows, bytes, status, attempts, claimed_by, lease_until, not_before,
           query_id, rows_loaded, error, created_at, loaded_at, statement_failures, columns
    FROM files;
DROP TABLE files;
ALTER TABLE files_new RENAME TO files;
CREATE INDEX files_status ON files (status, created_at);
