-- Gateway rejects move to the stage: each batch's rejects are one NDJSON object there
-- (`batches.rejects_path`), and the ledger keeps one narrow row per reject: its index, stage,
-- the code and column of each error (for filters, replays and the drift report) and where its
-- line is in the object (`at`, `len`, in bytes). Warehouse rejects, found one at a time by the
-- loader, stay whole in the ledger (`record` and full `errors`, no `at`).
ALTER TABLE batches ADD COLUMN rejects_path TEXT;

CREATE TABLE rejects_new (
    batch_id  TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    record    TEXT,
    errors    TEXT NOT NULL,
    stage     TEXT NOT NULL CHECK (stage IN ('gateway', 'warehouse')),
    at        INTEGER,
    len       INTEGER,
    PRIMARY KEY (batch_id, idx),
    CHECK ((record IS NULL) = (at IS NOT NULL AND len IS NOT NULL))
);
INSERT INTO rejects_new (batch_id, idx, record, errors, stage) SELECT batch_id, idx, record, errors, stage FROM rejects;
DROP TABLE rejects;
ALTER TABLE rejects_new RENAME TO rejects;
