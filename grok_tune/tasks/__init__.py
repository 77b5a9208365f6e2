"""Tasks: what a trial learns (placeholder while the task protocol is being written)."""
