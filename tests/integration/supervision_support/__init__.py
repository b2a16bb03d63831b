"""A tiny project for the supervision tests: app servers and a Celery worker to crash."""
