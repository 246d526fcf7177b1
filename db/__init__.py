"""PostgreSQL: the pool, the migration runner, the embedded fallback, and shared identity SQL."""
