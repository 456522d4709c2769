"""Covey: run open-weight LLMs across the machines you already own."""

__version__ = "0.1.0"
