-- `/metrics` reads when each table last loaded (MAX(loaded_at) of its loaded files) at every
-- scrape: this index answers it without reading every loaded file kept by retention.
CREATE INDEX files_loaded ON files (status, table_name, loaded_at);
