"""The layout of a run directory, and opening one safely.

::

    RUN/
      spec.yaml          the resolved spec
      manifest.json      versions, hardware, seeds, model hashes, per-stage status and timing
      findings.jsonl     the append-only findings ledger
      tables/NAME.csv    every table, also as NAME.json
      figures/NAME.png   every figure, also as NAME.svg
      report.html        the self-contained report
      cache/             scratch cache of stages that ask for one (safe to delete)
      .emoscope/         findings of a stage being committed (transient)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from emoscope._io import atomic_write_json
from emoscope.audit import Ledger
from emoscope.core.claims import CorrectedRun, correct_run
from emoscope.core.manifest import Manifest
from emoscope.errors import RunDirError

__all__ = ["RunDir"]


class RunDir:
    """Paths inside one run directory, and its manifest.

    >>> rd = RunDir("runs/demo")
    >>> rd.tables.as_posix()
    'runs/demo/tables'
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.spec_path = self.root / "spec.yaml"
        self.manifest_path = self.root / "manifest.json"
        self.findings_path = self.root / "findings.jsonl"
        self.report_path = self.root / "report.html"
        self.tables = self.root / "tables"
        self.figures = self.root / "figures"
        self.cache = self.root / "cache"
        self.internal = self.root / ".emoscope"

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def ledger(self) -> Ledger:
        """The findings ledger of this run."""
        return Ledger(self.findings_path)

    def findings(self, alpha: float = 0.05) -> CorrectedRun:
        """The ledger's findings with the run's one correction applied (Holm over every finding that
        records a p-value, claim or not; see ``emoscope.core.claims``): what audit and report show."""
        return correct_run(self.ledger.read(), alpha)

    def make_dirs(self) -> None:
        for d in (self.tables, self.figures, self.internal):
            d.mkdir(parents=True, exist_ok=True)

    def is_run_dir(self) -> bool:
        """True when the directory has a manifest (readable or not)."""
        return self.manifest_path.is_file()

    def is_empty(self) -> bool:
        """True when the directory is missing or has no entries."""
        return not self.root.exists() or (self.root.is_dir() and not any(self.root.iterdir()))

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> RunDir:
        """Open an existing run directory; a one-line ``RunDirError`` if it is not one.

        >>> RunDir.open("/nonexistent/run")
        Traceback (most recent call last):
        ...
        emoscope.errors.RunDirError: run directory /nonexistent/run does not exist
        """
        rd = cls(root)
        if not rd.root.exists():
            raise RunDirError(f"run directory {rd.root} does not exist")
        if not rd.root.is_dir():
            raise RunDirError(f"{rd.root} is not a directory; give a run directory")
        if not rd.is_run_dir():
            raise RunDirError(
                f"{rd.root} is not an emoscope run directory (no manifest.json); "
                f"create one with `emoscope run SPEC --out {rd.root}`"
            )
        rd.read_manifest()  # validates
        return rd

    def read_manifest(self) -> Manifest:
        """The manifest, validated; a corrupt one is a one-line ``RunDirError``."""
        where = self.manifest_path
        try:
            data = json.loads(where.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{self.root} is not an emoscope run directory (no manifest.json)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RunDirError(f"cannot read {where}: {getattr(e, 'strerror', None) or e}") from None
        except json.JSONDecodeError as e:
            raise RunDirError(f"{where} is corrupt (not valid JSON at line {e.lineno}: {e.msg})") from None
        if not isinstance(data, dict) or data.get("kind") != "emoscope-run":
            raise RunDirError(f"{where} is not an emoscope run manifest")
        try:
            return Manifest.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "manifest"
            raise RunDirError(f"{where} is corrupt ({loc}: {err['msg']})") from None

    def write_manifest(self, manifest: Manifest) -> None:
        """Write the manifest atomically."""
        atomic_write_json(self.manifest_path, manifest.model_dump(mode="json"))
