"""The run manifest: what ran, where, with which versions, and how far it got.

``manifest.json`` is rewritten atomically after every stage transition. A stage is marked
``done`` only after its tables, figures and findings are on disk.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "StageStatus",
    "StageRecord",
    "Manifest",
    "environment",
    "hardware",
    "git_info",
    "now",
]

MANIFEST_SCHEMA_VERSION = 1

StageStatus = Literal["pending", "running", "committing", "done", "skipped", "failed"]

_PACKAGES = ("emoscope", "torch", "transformers", "numpy", "pandas", "scikit-learn", "pydantic", "matplotlib")


def now() -> str:
    """UTC time, ISO 8601 to the millisecond."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class StageRecord(BaseModel):
    """One stage of a run, as the manifest records it."""

    model_config = ConfigDict(extra="forbid")

    status: StageStatus = "pending"
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None
    summary: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    tables: list[str] = Field(default_factory=list)
    figures: list[str] = Field(default_factory=list)
    findings: list[str] = Field(default_factory=list)
    error: str | None = None


class Manifest(BaseModel):
    """Everything needed to say what a run directory holds and how it was made."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    kind: Literal["emoscope-run"] = "emoscope-run"
    run_id: str
    spec_name: str
    spec_hash: str
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)
    status: Literal["running", "done", "failed"] = "running"
    stage_order: list[str] = Field(default_factory=list)
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    seeds: dict[str, Any] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    environment: dict[str, Any] = Field(default_factory=dict)
    hardware: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)

    def ordered_stages(self) -> list[tuple[str, StageRecord]]:
        """Stages in spec order."""
        return [(n, self.stages[n]) for n in self.stage_order if n in self.stages]


def _version(name: str) -> str | None:
    try:
        return _md.version(name)
    except _md.PackageNotFoundError:
        return None


def git_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Git revision and dirty flag of the tree holding ``path`` (default: the emoscope source).

    Read-only (``--no-optional-locks``); ``{"revision": None, ...}`` outside a git checkout.

    >>> sorted(git_info("/"))
    ['dirty', 'revision']
    """
    if path is None:
        path = Path(__file__).resolve().parents[1]
    info: dict[str, Any] = {"revision": None, "dirty": None}

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "--no-optional-locks", "-C", str(path), *args],
                                 capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if git("rev-parse", "--is-inside-work-tree") != "true":
        return info
    info["revision"] = git("rev-parse", "HEAD")  # None in a repository without commits
    status = git("status", "--porcelain", "--untracked-files=normal", "--", ".")
    info["dirty"] = None if status is None else bool(status)
    return info


def environment() -> dict[str, Any]:
    """Python, platform, package versions and the git state of the emoscope source."""
    packages = {name: _version(name) for name in _PACKAGES}
    # the package's own __version__ when the installed metadata is missing (a source checkout);
    # read from the loaded package, since `from emoscope import` would reach its lazy model imports
    packages["emoscope"] = getattr(sys.modules.get("emoscope"), "__version__", None) or packages["emoscope"]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": packages,
        "git": git_info(),
    }


def hardware() -> dict[str, Any]:
    """CPU count and, when torch is already imported (a model was loaded), its threads and GPUs.

    Torch is never imported just for this: a run without a model stays light.
    """
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        try:
            if torch.cuda.is_available():
                info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            else:
                info["gpus"] = []
        except Exception:  # noqa: BLE001 - a broken driver must not fail the run record
            info["gpus"] = None
    return info
