-- The SQLite storage format: one row per record, versions from one counter row. The Rust
-- host (sqlite.rs), the Node.js package (host/node, which copies this file when it is built)
-- and the Python package (host/python, likewise) all create and read this, so a file one wrote, the
-- others open.
CREATE TABLE IF NOT EXISTS tokenvault_records (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokenvault_version_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO tokenvault_version_counter (id, last) VALUES (1, 0);
