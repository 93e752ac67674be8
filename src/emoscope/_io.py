"""Small file helpers: atomic writes and hashing. Nothing here loads pickle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emoscope.errors import OutputError

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "ensure_writable_dir",
    "sha256_file",
    "sha256_bytes",
    "sha256_json",
    "load_yaml",
    "compose_yaml",
    "YAML_MAX_BYTES",
    "YAML_MAX_NODES",
]


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it onto ``dest`` only on success.

    A crash or exception leaves ``dest`` untouched and removes the temporary file.

    >>> with atomic_path("out.json") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_json(dest: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output directory {path}: {e.strerror or e}") from None
    if not path.is_dir():
        raise OutputError(f"output path {path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {path} is not writable; choose another --out")
    return path


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object with sorted keys (stable across runs)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


YAML_MAX_BYTES = 1_000_000
YAML_MAX_NODES = 50_000


def _bounded_loader():  # noqa: ANN202 - a yaml.SafeLoader subclass, built lazily
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader without aliases and with a node budget: a hostile file cannot make the
        parser (or anything that walks the result) do exponential work. Anchors alone are
        harmless; ``*alias`` references are refused."""

        def compose_node(self, parent, index):  # noqa: ANN001, ANN202
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in emoscope files",
                                                  mark)
            self._emoscope_nodes = getattr(self, "_emoscope_nodes", 0) + 1
            if self._emoscope_nodes > YAML_MAX_NODES:
                raise yaml.composer.ComposerError(None, None, f"more than {YAML_MAX_NODES} YAML nodes",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)

    return BoundedLoader


def _bounded(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what}: YAML text must be a string")
    if len(text.encode("utf-8", "surrogatepass")) > YAML_MAX_BYTES:
        import yaml

        raise yaml.YAMLError(f"{what} is larger than {YAML_MAX_BYTES // 1_000_000} MB")
    return text


def load_yaml(text: str, what: str = "YAML") -> Any:
    """``yaml.safe_load`` with bounds: at most ``YAML_MAX_BYTES`` of text and ``YAML_MAX_NODES``
    nodes, no aliases, no Python tags. Raises ``yaml.YAMLError`` (callers turn it into one line).

    >>> load_yaml("a: [1, 2]")
    {'a': [1, 2]}
    >>> try:
    ...     load_yaml("a: &x [1]" + chr(10) + "b: *x")
    ... except Exception as e:
    ...     print(str(e).splitlines()[0])
    aliases (*name) are not allowed in emoscope files
    """
    import yaml

    return yaml.load(_bounded(text, what), Loader=_bounded_loader())  # noqa: S506 - a SafeLoader subclass


def compose_yaml(text: str, what: str = "YAML") -> Any:
    """The node graph of ``text`` (for line numbers), with the bounds of :func:`load_yaml`."""
    import yaml

    return yaml.compose(_bounded(text, what), Loader=_bounded_loader())
