"""The one error a fetch raises, whatever the source (URL, hub, peers)."""

from __future__ import annotations


class FetchError(Exception):
    """A model file could not be had: the message says why, in words a user can act on.
    Nothing is left under the final name when it is raised."""
