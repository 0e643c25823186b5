-- A column widened in place by a re-declaration (a longer VARCHAR, a wider NUMBER) is audited
-- with the type it had; NULL for a column that was added.
ALTER TABLE schema_changes ADD COLUMN previous_type text;

-- Isolating the rows the warehouse refuses: a file with such a row is split in halves, new files
-- whose `parent_id` names it, and ends `split`; a part of one row that the warehouse refuses ends
-- `rejected` (its row is a reject of its batch).
ALTER TABLE files DROP CONSTRAINT files_status_known;
ALTER TABLE files ADD CONSTRAINT files_status_known
    CHECK (status IN ('pending', 'staged', 'loading', 'loaded', 'failed', 'abandoned', 'split', 'rejected'));
ALTER TABLE files ADD COLUMN parent_id uuid;
