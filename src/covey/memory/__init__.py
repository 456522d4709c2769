"""Memories: a local store searched by embedding (issue 16). See store.py."""
