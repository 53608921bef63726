"""CLI subcommands (thin wrappers over stage functions)."""
