-- Job store of one output folder (OUT/.anandasky/jobs.sqlite), schema version 2.
--
-- The version lives in PRAGMA user_version (set by pipeline/store.py after this script runs), so
-- opening a store reads one integer instead of scanning a table. Every statement is idempotent.
--
-- Paths are stored as TEXT when they are valid UTF-8 and as BLOB (the raw file-system bytes)
-- when they are not, so names from any file system round-trip exactly.

CREATE TABLE IF NOT EXISTS run_config (
    id          INTEGER PRIMARY KEY CHECK (id = 1),   -- one row per output folder
    fingerprint TEXT,                                -- JSON: what makes results comparable
    settings    TEXT,                                -- JSON: full settings, for `resume OUT`
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS documents (
    id         INTEGER PRIMARY KEY,
    relpath    TEXT NOT NULL UNIQUE,                 -- identity: path relative to its input root
    path       TEXT NOT NULL,                        -- where it was read from last time
    sha256     TEXT,
    size       INTEGER,
    mtime_ns   INTEGER,
    kind       TEXT,                                 -- e.g. pdf | image
    format     TEXT,                                 -- e.g. PDF | TIFF | JPEG
    page_count INTEGER,
    state      TEXT NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'failed')),
    reason     TEXT,                                 -- why the whole document failed
    updated_at REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS documents_state ON documents (state);

CREATE TABLE IF NOT EXISTS pages (
    id          INTEGER PRIMARY KEY,
    doc_id      INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    page_index  INTEGER NOT NULL,                    -- 0-based; users see page_index + 1
    state       TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,          -- failed attempts so far
    device      TEXT,                                -- e.g. npu:3, cuda:0, cpu
    error       TEXT,                                -- last failure, one line
    timings     TEXT,                                -- JSON: seconds per stage
    infer_s     REAL,                                -- timings["infer_s"], kept apart for summaries
    confidence  REAL,
    num_tokens  INTEGER,
    stop_reason TEXT,                                -- eos | max_new_tokens | repetition
    started_at  REAL,
    finished_at REAL,
    UNIQUE (doc_id, page_index)
);

-- "What is pending/running/failed" must stay instant with millions of done pages.
CREATE INDEX IF NOT EXISTS pages_state ON pages (state, doc_id, page_index);

-- Schema version 2 (added tables only: a version-1 store gains them on its next run and is
-- otherwise unchanged; `status` on a read-only version-1 store shows neither list).

-- Files of the inputs that are not pages (by name and content, or left out by --include /
-- --exclude): listed, never failed. Replaced as a whole by every run's discovery.
CREATE TABLE IF NOT EXISTS skipped_files (
    relpath    TEXT PRIMARY KEY,
    path       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    updated_at REAL NOT NULL
);

-- Documents whose input file was gone at a run's discovery. Their done pages (and outputs)
-- stay unless `--prune`; the rest of their pages are dropped, as no run can do them.
CREATE TABLE IF NOT EXISTS removed_sources (
    doc_id     INTEGER PRIMARY KEY REFERENCES documents (id) ON DELETE CASCADE,
    removed_at REAL NOT NULL
);
