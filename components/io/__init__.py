"""Filesystem helpers: outputs appear whole or not at all; s3:// downloads."""
