"""Command-line tools (dataset conversion)."""
