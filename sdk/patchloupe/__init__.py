"""patchloupe: unsupervised visual defect detection."""

from __future__ import annotations

__version__ = "0.1.0"
