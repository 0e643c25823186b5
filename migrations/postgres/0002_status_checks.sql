-- Status and policy names are checked by the database, not only by the code that writes them.
-- The lists match the Rust enums (BatchStatus, FileStatus, RejectStage, DriftPolicy and the
-- policies the design names); the ledger conformance suite writes every variant.
ALTER TABLE batches ADD CONSTRAINT batches_status_known
    CHECK (status IN ('staged', 'loading', 'loaded', 'rejected', 'failed'));
ALTER TABLE batches ADD CONSTRAINT batches_counts_valid
    CHECK (received >= 0 AND accepted >= 0 AND rejected >= 0 AND loaded >= 0);
ALTER TABLE files ADD CONSTRAINT files_status_known
    CHECK (status IN ('pending', 'staged', 'loading', 'loaded', 'failed', 'abandoned'));
ALTER TABLE rejects ADD CONSTRAINT rejects_stage_known
    CHECK (stage IN ('gateway', 'warehouse'));
-- Every change to a table's record adds one, so replicas can tell a stale cache without clocks.
ALTER TABLE tables ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE tables ADD CONSTRAINT tables_drift_known
    CHECK (drift IN ('evolve', 'rescue', 'discard_value', 'discard_row', 'freeze'));
