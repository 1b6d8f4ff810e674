"""Jobs: the job-backend interface, its SQLite store, and what the store reports."""
