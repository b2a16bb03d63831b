"""djscale management commands."""
