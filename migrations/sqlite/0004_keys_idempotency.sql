-- Partner API keys: only a SHA-256 of the secret part is kept; `tables` is a JSON array of
-- table names, `operator` 1 for keys that may do everything. Keys are revoked, never deleted,
-- so that once the first key exists the gateway stays closed.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    secret_hash   TEXT NOT NULL,
    partner       TEXT NOT NULL,
    tables        TEXT NOT NULL,
    operator      INTEGER NOT NULL CHECK (operator IN (0, 1)),
    created_at    TEXT NOT NULL,
    last_used_at  TEXT,
    revoked_at    TEXT
);

-- Idempotency keys, per partner: the batch a key made (or is making). The batch exists in
-- `batches` once committed; until then `owner` (a replica) holds the key until `lease_until`.
CREATE TABLE idempotency_keys (
    partner       TEXT NOT NULL,
    key           TEXT NOT NULL,
    body_hash     TEXT NOT NULL,
    batch_id      TEXT NOT NULL,
    owner         TEXT NOT NULL,
    lease_until   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (partner, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The audit log names who changed a table: the partner whose batch added a column, or whoever
-- declared it. Rows from before this migration have none.
ALTER TABLE schema_changes ADD COLUMN partner TEXT;

-- What the drift policy did to a batch's accepted records: fields dropped (discard_value) and
-- fields or values kept in _RESCUED_DATA (rescue), as a JSON object.
ALTER TABLE batches ADD COLUMN drift_counts TEXT NOT NULL DEFAULT '{}';

-- The columns (name, type, nullable) a staged file was written with, as JSON: the loader selects
-- them by name and type. NULL for files staged before this migration.
ALTER TABLE files ADD COLUMN columns TEXT;

-- Field aliases of a table, as a JSON object from a normalised field name to the column it
-- lands in: a partner's renamed field keeps loading into the old column.
ALTER TABLE tables ADD COLUMN aliases TEXT NOT NULL DEFAULT '{}';
