-- snowgate ledger, Postgres flavour: the same tables as the SQLite one.
-- JSON is kept as text, not jsonb: jsonb reorders object keys and refuses \u0000, and a reject
-- must come back exactly as the partner sent it.
-- Text that is sorted or compared with MAX uses the "C" collation so that the order is the
-- bytewise one SQLite uses, whatever the database's default collation is.

CREATE TABLE tables (
    name        text COLLATE "C" PRIMARY KEY,
    drift       text NOT NULL,
    columns     text NOT NULL,          -- JSON array of {name, type, nullable}
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE schema_changes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name   text NOT NULL,
    column_name  text NOT NULL,
    column_type  text NOT NULL,
    batch_id     uuid,
    at           timestamptz NOT NULL
);
CREATE INDEX schema_changes_table ON schema_changes (table_name, id);
CREATE INDEX schema_changes_batch ON schema_changes (batch_id);

CREATE TABLE batches (
    id               uuid PRIMARY KEY,  -- UUIDv7: sorts by time
    table_name       text NOT NULL,
    partner          text NOT NULL,
    status           text NOT NULL,
    received         bigint NOT NULL,
    accepted         bigint NOT NULL,
    rejected         bigint NOT NULL,
    loaded           bigint NOT NULL DEFAULT 0,
    rejects_by_code  text NOT NULL DEFAULT '{}',
    received_at      timestamptz NOT NULL,
    staged_at        timestamptz,
    loaded_at        timestamptz,
    error            text
);
CREATE INDEX batches_table ON batches (table_name, id);
CREATE INDEX batches_status ON batches (status, id);
CREATE INDEX batches_partner ON batches (partner, id);

CREATE TABLE rejects (
    batch_id  uuid NOT NULL,
    idx       bigint NOT NULL,
    record    text NOT NULL,
    errors    text NOT NULL,
    stage     text NOT NULL,
    PRIMARY KEY (batch_id, idx)
);

CREATE TABLE files (
    id           uuid PRIMARY KEY,
    table_name   text COLLATE "C" NOT NULL,
    path         text COLLATE "C" NOT NULL UNIQUE,
    rows         bigint NOT NULL,
    bytes        bigint NOT NULL,
    status       text NOT NULL,
    attempts     bigint NOT NULL DEFAULT 0,
    claimed_by   text,
    lease_until  timestamptz,
    not_before   timestamptz,
    query_id     text,
    rows_loaded  bigint,
    error        text COLLATE "C",
    created_at   timestamptz NOT NULL,
    loaded_at    timestamptz
);
CREATE INDEX files_status ON files (status, created_at);

CREATE TABLE file_batches (
    file_id   uuid NOT NULL,
    batch_id  uuid NOT NULL,
    rows      bigint NOT NULL,
    PRIMARY KEY (file_id, batch_id)
);
CREATE INDEX file_batches_batch ON file_batches (batch_id);
