"""patchloupe: unsupervised visual defect detection from defect-free images.

Example:
    >>> from patchloupe import Detector
    >>> det = Detector.load()                 # doctest: +SKIP
    >>> det.inspect("part.png").is_anomalous  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Detector", "InspectionResult", "InspectionError", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: `import patchloupe` stays cheap (no torch import)
    if name == "Detector":
        from patchloupe.detector import Detector

        return Detector
    if name in ("InspectionResult", "InspectionError"):
        from patchloupe import results

        return getattr(results, name)
    raise AttributeError(f"module 'patchloupe' has no attribute {name!r}")
