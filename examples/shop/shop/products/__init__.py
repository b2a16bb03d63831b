"""The products service: catalogue on a primary with replicas, served from the tiered cache."""
