"""Getting model files: from a path, a URL, the hub, or mesh peers."""
