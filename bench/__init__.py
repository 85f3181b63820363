"""Performance scenarios for nbdesk: `uv run python -m bench`."""
