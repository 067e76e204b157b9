"""Run outputs of ``patchloupe inspect``: one JSON line per result, overlays, and a summary, never overwriting.

``RunOutputs(out)`` opens ``out/results.jsonl`` at once (so an unwritable folder fails before any work),
appends one flushed line per result as it comes (a crash loses nothing written before it), saves overlays
under names that are distinct for every input (:class:`NameAllocator`), and on ``close`` writes
``out/results.json`` (the same records as a JSON list, streamed from the lines, so memory stays flat).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from patchloupe.fileio import fsync_dir

__all__ = ["SAVE_MODES", "NameAllocator", "RunOutputs"]

SAVE_MODES = ("all", "flagged", "none")
#: Names (without suffix) the run itself writes at the top of the output folder.
RESERVED = ("results",)


class NameAllocator:
    """Hands out output names (relative, no suffix) that are distinct, case-insensitively, within a run.

    A wanted name that is already taken or reserved gets ``_2``, ``_3``, ... appended.
    """

    def __init__(self, reserved: Iterable[str] = RESERVED) -> None:
        self._taken = {r.casefold() for r in reserved}

    def allocate(self, wanted: str) -> str:
        wanted = wanted.strip("/") or "item"
        name, k = wanted, 1
        while name.casefold() in self._taken:
            k += 1
            name = f"{wanted}_{k}"
        self._taken.add(name.casefold())
        return name


class RunOutputs:
    """Writes the results of one run into ``out``; ``save`` is ``"all"``, ``"flagged"`` or ``"none"``."""

    def __init__(self, out: str | os.PathLike[str], save: str = "flagged", echo: TextIO | None = None) -> None:
        if save not in SAVE_MODES:
            raise ValueError(f"save must be one of {SAVE_MODES}, got {save!r}")
        self.out = Path(out)
        self.save = save
        self.echo = echo
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lines_path = self.out / "results.jsonl"
            self._lines = open(self._lines_path, "w", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        except OSError as exc:
            raise OSError(f"cannot write to the output folder {self.out}: {exc.strerror or exc}") from exc
        self.names = NameAllocator()
        self.n_records = 0

    def write(self, item: Any) -> dict[str, Any]:
        """Record one :class:`~patchloupe.stream.StreamResult`; saves its overlay per ``save``; returns the record."""
        overlay = None
        res = item.result
        if res.ok and (self.save == "all" or (self.save == "flagged" and res.is_anomalous)):
            name = self.names.allocate(item.name or Path(str(item.source)).stem)
            path = res.save(self.out / f"{name}.png")
            overlay = str(path.relative_to(self.out))
        record = item.to_dict()
        record["overlay"] = overlay
        line = json.dumps(record)
        self._lines.write(line + "\n")
        self._lines.flush()
        if self.echo is not None:
            self.echo.write(line + "\n")
            self.echo.flush()
        self.n_records += 1
        return record

    def close(self) -> Path:
        """Flush the lines and write ``results.json`` (a JSON list of the same records)."""
        self._lines.flush()
        os.fsync(self._lines.fileno())
        self._lines.close()
        final = self.out / "results.json"
        tmp = self.out / ".results.json.tmp"
        with open(self._lines_path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            dst.write("[")
            for i, line in enumerate(src):
                dst.write(("," if i else "") + "\n  " + line.rstrip("\n"))
            dst.write("\n]\n" if self.n_records else "]\n")
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, final)
        fsync_dir(self.out)
        return final
