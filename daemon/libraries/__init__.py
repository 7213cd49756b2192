"""Libraries: one SQLite database each, found again after a restart."""
