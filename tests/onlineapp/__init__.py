"""A sharded app migrated while it serves: the zero-downtime migration tests and benchmark.

``models.py`` is the code in service (release N): ``Item`` without ``total``.
``migrations/`` add ``total`` the safe way (nullable column, index CONCURRENTLY, batched
backfill); ``unsafe_migrations/`` does the same kind of changes the unsafe way, for the
guard. ``scenario.py`` loads rows, serves them under load and migrates.
"""
