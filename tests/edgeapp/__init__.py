"""Views for the edge tests: opt-in public caching, sessions, cookies, forwarded headers."""
