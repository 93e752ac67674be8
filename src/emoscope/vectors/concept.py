"""``ConceptVector``: one direction per layer, with arithmetic and safetensors storage.

File format: a ``.safetensors`` file with one tensor per layer under the key ``layer.{i}``
and the name and metadata JSON-encoded in the header under ``"emoscope"``. No pickle.
"""

from __future__ import annotations

import copy
import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emoscope._io import atomic_path
from emoscope.errors import DataError, InputError, OutputError

__all__ = ["ConceptVector", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_HEADER_KEY = "emoscope"
# meta entries keyed by layer; JSON turns their keys into strings, so save records which
# entries had integer keys and load turns them back (these two are assumed for old files).
_LAYER_KEYED = ("layer_norms", "mean_resid_norm")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _parse_header(text: str, path: Path) -> tuple[str, dict[str, Any], list[str]]:
    """``(name, meta, int_keyed)`` from the ``"emoscope"`` header; ``DataError`` when it is not
    what ``save`` writes."""
    def corrupt(why: str) -> DataError:
        return DataError(f"{path}: emoscope metadata is corrupt ({why}); re-save the vector")

    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise corrupt(f"not JSON: {str(e)[:60]}") from None
    if not isinstance(header, dict):
        raise corrupt(f"a JSON {type(header).__name__}, not an object")
    version = header.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise DataError(f"{path}: written by a newer emoscope (format {version}, this one reads {FORMAT_VERSION}); "
                        "upgrade emoscope")
    name, meta = header.get("name"), header.get("meta") or {}
    if not isinstance(name, str) or not name:
        raise corrupt("no name")
    if not isinstance(meta, dict):
        raise corrupt(f"meta is a {type(meta).__name__}, not an object")
    int_keyed = header.get("int_keyed_meta", list(_LAYER_KEYED))
    if not isinstance(int_keyed, list) or not all(isinstance(k, str) for k in int_keyed):
        raise corrupt("int_keyed_meta is not a list of names")
    return name, dict(meta), int_keyed


@dataclass(frozen=True, eq=False)
class ConceptVector:
    """A named concept direction with one ``(d,)`` vector per layer.

    Arithmetic is layer-wise: ``a + b``, ``a - b``, ``2.0 * a``, ``-a``, ``a / 2``; adding
    vectors with different layers or widths raises ``InputError``. The arrays are stored
    read-only.

    >>> import numpy as np
    >>> v = ConceptVector("joy", {3: np.array([3.0, 4.0])}, {"method": "diff_means"})
    >>> v.norms()
    {3: 5.0}
    >>> (v - v).norms()
    {3: 0.0}
    >>> (-(-v))[3].tolist()
    [3.0, 4.0]
    """

    name: str
    vectors: dict[int, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError("ConceptVector needs a non-empty string name")
        if not isinstance(self.vectors, dict) or not self.vectors:
            raise InputError(f"ConceptVector {self.name!r} needs a non-empty dict {{layer: (d,) array}}")
        clean: dict[int, np.ndarray] = {}
        widths = set()
        for layer in sorted(self.vectors, key=int):
            arr = np.array(self.vectors[layer], copy=True)
            if arr.ndim != 1 or arr.size == 0:
                raise InputError(f"ConceptVector {self.name!r}: layer {layer} must be a 1-D (d,) array; got shape {arr.shape}")
            if not np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(np.float32)
            if not np.all(np.isfinite(arr)):
                raise InputError(f"ConceptVector {self.name!r}: layer {layer} has NaN or infinite values")
            arr.setflags(write=False)
            clean[int(layer)] = arr
            widths.add(arr.shape[0])
        if len(widths) != 1:
            raise InputError(f"ConceptVector {self.name!r}: layers have different widths {sorted(widths)}")
        object.__setattr__(self, "vectors", clean)
        object.__setattr__(self, "meta", copy.deepcopy(dict(self.meta or {})))

    # ---- shape -------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """Sorted layer indices."""
        return list(self.vectors)

    @property
    def d(self) -> int:
        """Width of every layer's vector."""
        return next(iter(self.vectors.values())).shape[0]

    def __getitem__(self, layer: int) -> np.ndarray:
        try:
            return self.vectors[int(layer)]
        except KeyError:
            raise InputError(f"ConceptVector {self.name!r} has no layer {layer}; it has {self.layers}") from None

    def __repr__(self) -> str:
        return f"ConceptVector(name={self.name!r}, layers={self.layers}, d={self.d}, method={self.meta.get('method')!r})"

    # ---- arithmetic --------------------------------------------------------------------
    def _check_compatible(self, other: ConceptVector) -> None:
        if self.layers != other.layers:
            raise InputError(
                f"cannot combine {self.name!r} (layers {self.layers}) with {other.name!r} (layers {other.layers})"
            )
        if self.d != other.d:
            raise InputError(f"cannot combine {self.name!r} (d={self.d}) with {other.name!r} (d={other.d})")

    def _derive(self, name: str, vectors: dict[int, np.ndarray], expr: str) -> ConceptVector:
        return ConceptVector(name, vectors, {"method": "arithmetic", "expr": expr})

    def __add__(self, other: Any) -> ConceptVector:
        if not isinstance(other, ConceptVector):
            return NotImplemented
        self._check_compatible(other)
        name = f"({self.name} + {other.name})"
        return self._derive(name, {k: self[k] + other[k] for k in self.layers}, name)

    def __sub__(self, other: Any) -> ConceptVector:
        if not isinstance(other, ConceptVector):
            return NotImplemented
        self._check_compatible(other)
        name = f"({self.name} - {other.name})"
        return self._derive(name, {k: self[k] - other[k] for k in self.layers}, name)

    def __mul__(self, scalar: Any) -> ConceptVector:
        if not isinstance(scalar, numbers.Real) or isinstance(scalar, bool):
            return NotImplemented
        s = float(scalar)
        name = f"{s:g}*{self.name}"
        return self._derive(name, {k: (self[k] * s).astype(self[k].dtype) for k in self.layers}, name)

    __rmul__ = __mul__

    def __truediv__(self, scalar: Any) -> ConceptVector:
        if not isinstance(scalar, numbers.Real) or isinstance(scalar, bool):
            return NotImplemented
        if float(scalar) == 0.0:
            raise InputError("cannot divide a ConceptVector by zero")
        return self * (1.0 / float(scalar))

    def __neg__(self) -> ConceptVector:
        name = self.name[1:] if self.name.startswith("-") else f"-{self.name}"
        return self._derive(name, {k: -self[k] for k in self.layers}, f"-{self.name}")

    # ---- measurements ------------------------------------------------------------------
    def norms(self) -> dict[int, float]:
        """L2 norm per layer."""
        return {k: float(np.linalg.norm(v)) for k, v in self.vectors.items()}

    def normalized(self) -> ConceptVector:
        """Unit-norm copy (a zero layer stays zero); ``meta`` is kept, with ``normalized=True``."""
        out = {}
        for k, v in self.vectors.items():
            n = float(np.linalg.norm(v))
            out[k] = v / n if n > 0 else v.copy()
        return ConceptVector(self.name, out, {**self.meta, "normalized": True})

    def cosine(self, other: ConceptVector) -> dict[int, float]:
        """Cosine similarity per layer (0.0 where either vector is zero).

        >>> import numpy as np
        >>> a = ConceptVector("a", {0: np.array([1.0, 0.0])})
        >>> b = ConceptVector("b", {0: np.array([1.0, 1.0])})
        >>> round(a.cosine(b)[0], 4)
        0.7071
        """
        self._check_compatible(other)
        out = {}
        for k in self.layers:
            a, b = self[k].astype(np.float64), other[k].astype(np.float64)
            den = float(np.linalg.norm(a) * np.linalg.norm(b))
            out[k] = float(a @ b / den) if den > 0 else 0.0
        return out

    def equals(self, other: ConceptVector) -> bool:
        """Exact equality of name, layers, dtypes and values."""
        return (
            isinstance(other, ConceptVector)
            and self.name == other.name
            and self.layers == other.layers
            and all(self[k].dtype == other[k].dtype and np.array_equal(self[k], other[k]) for k in self.layers)
        )

    # ---- storage -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a ``.safetensors`` file atomically (suffix added if missing); return its path.

        >>> import numpy as np, tempfile, pathlib
        >>> v = ConceptVector("joy", {0: np.ones(4, dtype=np.float32)})
        >>> p = v.save(pathlib.Path(tempfile.mkdtemp()) / "joy")
        >>> ConceptVector.load(p).equals(v)
        True
        """
        from safetensors.numpy import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        if not path.parent.is_dir():
            raise OutputError(f"cannot save {path}: directory {path.parent} does not exist")
        int_keyed = sorted(
            k for k, v in self.meta.items()
            if isinstance(v, dict) and v and all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in v)
        )
        header = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "meta": _json_safe(self.meta),
            "int_keyed_meta": int_keyed,
        }
        try:
            text = json.dumps(header, sort_keys=True, allow_nan=True)
        except TypeError as e:
            raise InputError(f"ConceptVector meta must be JSON-serialisable: {e}") from None
        tensors = {f"layer.{k}": np.ascontiguousarray(v) for k, v in self.vectors.items()}
        try:
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata={_HEADER_KEY: text})
        except OSError as e:
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConceptVector:
        """Read a file written by :meth:`save`; ``DataError`` if missing or corrupt.

        >>> ConceptVector.load("missing.safetensors")  # doctest: +SKIP
        Traceback (most recent call last):
        emoscope.errors.DataError: concept vector file not found: missing.safetensors
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"concept vector file not found: {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                header_text = (f.metadata() or {}).get(_HEADER_KEY)
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as e:  # safetensors raises several types on a damaged header
            raise DataError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); re-save it") from None
        if header_text is None:
            raise DataError(f"{path} has no emoscope metadata; it was not written by ConceptVector.save")
        name, meta, int_keyed = _parse_header(header_text, path)
        vectors = {}
        for key, arr in tensors.items():
            prefix, _, idx = key.partition(".")
            if prefix != "layer" or not idx.lstrip("-").isdigit():
                raise DataError(f"{path}: unexpected tensor key {key[:40]!r} (expected 'layer.<i>')")
            if int(idx) in vectors:
                raise DataError(f"{path}: two tensors for layer {int(idx)}; re-save the vector")
            vectors[int(idx)] = arr
        try:
            for key in int_keyed:
                if isinstance(meta.get(key), dict):
                    meta[key] = {int(k): v for k, v in meta[key].items()}
        except ValueError as e:
            raise DataError(f"{path}: emoscope metadata is corrupt ({str(e)[:80]})") from None
        try:
            return cls(name, vectors, meta)
        except InputError as e:
            raise DataError(f"{path}: {e}") from None
