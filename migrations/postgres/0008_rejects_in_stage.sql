-- Gateway rejects move to the stage: each batch's rejects are one NDJSON object there
-- (`batches.rejects_path`), and the ledger keeps one narrow row per reject: its index, stage,
-- the code and column of each error (for filters, replays and the drift report) and where its
-- line is in the object (`at`, `len`, in bytes). Warehouse rejects, found one at a time by the
-- loader, stay whole in the ledger (`record` and full `errors`, no `at`).
ALTER TABLE batches ADD COLUMN rejects_path text;

ALTER TABLE rejects ALTER COLUMN record DROP NOT NULL;
ALTER TABLE rejects ADD COLUMN at bigint;
ALTER TABLE rejects ADD COLUMN len bigint;
ALTER TABLE rejects ADD CONSTRAINT rejects_whole_or_staged
    CHECK ((record IS NULL) = (at IS NOT NULL AND len IS NOT NULL));
