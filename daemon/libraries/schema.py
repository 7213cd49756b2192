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
]
