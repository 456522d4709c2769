"""Getting model files: from URLs, the hub's URL form, and mesh peers (issue 12)."""
