"""An append-only ledger of findings: one JSON object per line, never edited.

Every line carries ``schema_version``. Appending opens the file in append mode and writes
each record with one ``write`` followed by ``flush`` and ``fsync``, so earlier bytes are never
touched and a crash loses at most the record being written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import ValidationError

from emoscope.audit.finding import SCHEMA_VERSION, Finding
from emoscope.errors import OutputError, RunDirError

__all__ = ["Ledger"]


class Ledger:
    """The findings of one run, in ``path`` (usually ``RUN/findings.jsonl``).

    >>> from emoscope.audit import Finding, Observation
    >>> ledger = Ledger("findings.jsonl")                       # doctest: +SKIP
    >>> ledger.append(Finding(kind="extraction",
    ...               observation=Observation(metric="mean norm", value=41.2)))  # doctest: +SKIP
    >>> [f.verdict for f in ledger]                             # doctest: +SKIP
    ['ships']
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    def append(self, finding: Finding) -> None:
        """Append one finding (one write, flushed and fsynced)."""
        self.extend([finding])

    def extend(self, findings: Iterable[Finding]) -> int:
        """Append findings in order, one write + flush + fsync each; returns how many."""
        lines = [self._encode(f) for f in findings]  # encode all first: no half-written batch on a bad one
        if not lines:
            return 0
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                for line in lines:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as e:
            raise OutputError(f"cannot append to {self.path}: {e.strerror or e}") from None
        return len(lines)

    @staticmethod
    def _encode(finding: Finding) -> str:
        record = {"schema_version": SCHEMA_VERSION, **finding.model_dump(mode="json")}
        text = json.dumps(record, sort_keys=True, ensure_ascii=False)
        return text + "\n"

    def read(self) -> list[Finding]:
        """All findings, validated. A missing file is an empty ledger.

        Raises ``RunDirError("findings.jsonl:LINE: ...")`` for the first corrupt line.
        """
        return list(self)

    def __iter__(self) -> Iterator[Finding]:
        if not self.path.exists():
            return
        name = self.path.name
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RunDirError(f"{name}:{lineno}: not valid JSON ({e.msg}); the ledger is corrupt") from None
                if not isinstance(record, dict):
                    raise RunDirError(f"{name}:{lineno}: expected a JSON object, got {type(record).__name__}")
                version = record.pop("schema_version", None)
                if version not in (1, 2, SCHEMA_VERSION):  # versions 1 and 2 lack only optional fields
                    raise RunDirError(
                        f"{name}:{lineno}: schema_version {version!r} is not supported "
                        f"(this emoscope reads {SCHEMA_VERSION})"
                    )
                try:
                    yield Finding.model_validate(record, context={"stored": True})
                except ValidationError as e:
                    err = e.errors()[0]
                    loc = ".".join(str(p) for p in err["loc"]) or "record"
                    raise RunDirError(f"{name}:{lineno}: {loc}: {err['msg']}") from None

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def ids(self) -> set[str]:
        """The ids already in the ledger."""
        return {f.id for f in self}
