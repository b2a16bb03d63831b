"""djscale management commands (one module per command)."""
