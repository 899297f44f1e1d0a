"""The `rlhf` command line."""
