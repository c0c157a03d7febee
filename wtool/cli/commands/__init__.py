"""Click commands, one module per command (group). Each module exposes `command`."""
