-- COPY failures of no known kind, per file: the loader fails a file after
-- loader.statement_attempts of them, whatever its other retries (outages, lease expiries).
ALTER TABLE files ADD COLUMN statement_failures bigint NOT NULL DEFAULT 0;
