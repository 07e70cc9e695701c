"""The `modelbus` command: runs the whole stack or any one part of it."""
