"""Database routing over PostgreSQL primaries and replicas."""
