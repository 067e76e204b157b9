"""Scorers: the ways of turning a batch of images into patch scores and a pixel field.

Each scorer lives in its own module and implements :class:`patchloupe.scorers.base.Scorer`; the
registry below maps the name saved in ``detector.json`` to the module and class, imported on first
use (so loading a model imports only its own scorer). Adding a scorer is one module and one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from patchloupe.scorers.base import Scorer

#: name -> "module:Class"
SCORERS: dict[str, str] = {
    "pattern": "patchloupe.scorers.pattern:PatternScorer",
    "memory": "patchloupe.scorers.memory:MemoryScorer",
    "selfref": "patchloupe.scorers.selfref:SelfRefScorer",
}

__all__ = ["SCORERS", "scorer_class"]


def scorer_class(name: str) -> type[Scorer]:
    """The scorer class registered under ``name``."""
    if not isinstance(name, str) or name not in SCORERS:
        raise ValueError(f"scorer must be one of {tuple(SCORERS)}, got {name!r}")
    module, cls = SCORERS[name].split(":")
    return getattr(importlib.import_module(module), cls)
