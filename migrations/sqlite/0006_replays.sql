-- Replays: a batch whose records are corrected versions of another batch's rejects, keyed by
-- the original record index (a replay batch's record indexes are the original's).
ALTER TABLE batches ADD COLUMN replay_of TEXT;

-- Which replay batch holds each replayed record of an original batch. A row is taken before its
-- replay batch is stored and holds until `lease_until` (the request's lease); the commit that
-- stores the batch settles it (`lease_until` NULL). A settled row holds unless its batch rejected
-- that record again or failed without loading a row: so one reject is loaded by at most one
-- replay.
CREATE TABLE replays (
    original_id  TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    replay_id    TEXT NOT NULL,
    lease_until  TEXT,
    PRIMARY KEY (original_id, idx)
);
CREATE INDEX replays_replay ON replays (replay_id);
