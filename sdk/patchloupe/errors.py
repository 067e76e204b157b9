"""Exceptions shared across the SDK (torch-free, so runtimes without torch can raise and catch them)."""

from __future__ import annotations

__all__ = ["ModelError"]


class ModelError(ValueError):
    """A model folder or exported model is missing, incomplete, corrupt or from an incompatible version."""
