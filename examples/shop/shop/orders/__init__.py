"""The orders service: orders sharded by user id, so a user's orders live together."""
