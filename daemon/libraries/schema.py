"""Ordered migrations of a library database; index i takes it to version i+1.

Never edit a migration that has shipped: append a new one.
"""

MIGRATIONS: list[str] = [
    # 1: library identity and the job system.
    """
    CREATE TABLE library (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        input BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('queued', 'running', 'paused', 'completed', 'failed', 'cancelled')),
        resumable INTEGER NOT NULL,
        extension_id TEXT,
        created_at REAL NOT NULL,
        queued_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        updated_at REAL NOT NULL,
        progress REAL NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        items INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        warnings TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        output BLOB,
        checkpoint BLOB,
        checkpoint_at REAL,
        checkpoints INTEGER NOT NULL DEFAULT 0,
        pause_reason TEXT
    );
    CREATE INDEX jobs_by_status ON jobs (status, queued_at, seq);
    CREATE TABLE job_transitions (
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        status TEXT NOT NULL,
        at REAL NOT NULL,
        note TEXT
    );
    CREATE INDEX job_transitions_by_job ON job_transitions (job_id, at)
    """,
    # 2: locations and their index (entries), tags, and per-extension storage.
    """
    CREATE TABLE locations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at REAL NOT NULL,
        indexed_at REAL,
        index_job_id TEXT
    );
    CREATE TABLE entries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        location_id INTEGER NOT NULL REFERENCES locations (id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        parent TEXT NOT NULL,
        name TEXT NOT NULL,
        extension TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('file', 'dir', 'symlink', 'other')),
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        dev INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        cas_id TEXT,
        missing INTEGER NOT NULL DEFAULT 0,
        UNIQUE (location_id, path)
    );
    CREATE INDEX entries_by_parent ON entries (location_id, parent);
    CREATE INDEX entries_by_kind ON entries (location_id, kind);
    CREATE INDEX entries_by_size ON entries (location_id, size);
    CREATE INDEX entries_by_inode ON entries (location_id, inode);
    CREATE INDEX entries_by_extension ON entries (extension);
    CREATE INDEX entries_by_cas_id ON entries (cas_id) WHERE cas_id IS NOT NULL;
    CREATE INDEX entries_missing ON entries (location_id) WHERE missing = 1;
    CREATE TABLE tags (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        color TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE entry_tags (
        tag_id INTEGER NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
        entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        PRIMARY KEY (tag_id, entry_id)
    ) WITHOUT ROWID;
    CREATE INDEX entry_tags_by_entry ON entry_tags (entry_id);
    CREATE TABLE extension_storage (
        extension_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (extension_id, key)
    ) WITHOUT ROWID
    """,
    # 3: what a job is called where it is shown (e.g. "duplicate-finder:find" for a
    # wasm_job); NULL: its type's name.
    """
    ALTER TABLE jobs ADD COLUMN label TEXT;
    CREATE INDEX jobs_by_extension ON jobs (extension_id, seq)
    """,
    # 4: full-content BLAKE3 hashes, one per file (dev, inode), valid while its size, mtime and
    # ctime are those it was hashed with.
    """
    CREATE TABLE content_hashes (
        dev INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        hash TEXT NOT NULL,
        hashed_at REAL NOT NULL,
        PRIMARY KEY (dev, inode)
    ) WITHOUT ROWID
    """,
    # 5: an index for each entries.list filter in each page order, so that a keyset page
    # costs the same at any depth of a library of any size (daemon/locations/store.py,
    # entries_sql). The rare kinds (not 'file') get partial indexes: nearly free to keep.
    # dir_listings: the hash of each directory's listing as the indexer last applied it,
    # so a rescan skips directories listed the same again; any change to a child row,
    # by any code, drops its directory's hash (the triggers; one statement per line:
    # the migration runner splits on ";" + newline).
    """
    DROP INDEX entries_by_kind;
    CREATE INDEX entries_by_location ON entries (location_id);
    CREATE INDEX entries_by_extension_size ON entries (extension, size);
    CREATE INDEX entries_rare_kind ON entries (kind) WHERE kind != 'file';
    CREATE INDEX entries_rare_kind_size ON entries (kind, size) WHERE kind != 'file';
    CREATE TABLE dir_listings (
        location_id INTEGER NOT NULL REFERENCES locations (id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (location_id, path)
    ) WITHOUT ROWID;
    CREATE TRIGGER entries_insert_drops_listing AFTER INSERT ON entries BEGIN DELETE FROM dir_listings WHERE location_id = NEW.location_id AND path = NEW.parent; END;
    CREATE TRIGGER entries_delete_drops_listing AFTER DELETE ON entries BEGIN DELETE FROM dir_listings WHERE location_id = OLD.location_id AND path = OLD.parent; END;
    CREATE TRIGGER entries_update_drops_listing AFTER UPDATE OF location_id, path, parent, name, kind, size, mtime_ns, dev, inode, missing ON entries BEGIN DELETE FROM dir_listings WHERE location_id = OLD.location_id AND path = OLD.parent; DELETE FROM dir_listings WHERE location_id = NEW.location_id AND path = NEW.parent; END
    """,
    # 6: live watching per location (on unless added with --no-watch).
    """
    ALTER TABLE locations ADD COLUMN watch INTEGER NOT NULL DEFAULT 1
    """,
    # 7: each tagged entry's size in entry_tags, kept equal to the entry's by triggers, so
    # one tag's entries walk in size order from a cursor (entries.list by tag, order=size)
    # instead of being fetched and sorted on every page.
    """
    ALTER TABLE entry_tags ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    UPDATE entry_tags SET size = (SELECT e.size FROM entries e WHERE e.id = entry_tags.entry_id);
    CREATE INDEX entry_tags_by_size ON entry_tags (tag_id, size, entry_id);
    CREATE TRIGGER entry_tags_take_size AFTER INSERT ON entry_tags BEGIN UPDATE entry_tags SET size = (SELECT e.size FROM entries e WHERE e.id = NEW.entry_id) WHERE tag_id = NEW.tag_id AND entry_id = NEW.entry_id; END;
    CREATE TRIGGER entries_size_to_tags AFTER UPDATE OF size ON entries BEGIN UPDATE entry_tags SET size = NEW.size WHERE entry_id = NEW.id; END
    """,
    # 8: secondary indexes of a table dropped for a bulk load (daemon/libraries/deferred.py),
    # each with the SQL that makes it again; a library opened with rows here gets them back
    # before anything else runs (a kill -9 during a location's first walk).
    """
    CREATE TABLE deferred_indexes (
        name TEXT PRIMARY KEY,
        tbl TEXT NOT NULL,
        sql TEXT NOT NULL,
        deferred_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
]
