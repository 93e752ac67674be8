"""``Activations``: per-layer arrays read from the residual stream, with their provenance.

On disk: ``activations.safetensors`` (keys ``layer.{i}``, plus ``token_counts`` and, for
position ``all``, ``offsets``) and ``manifest.json``. Both are written atomically; the
manifest last, so a directory with a manifest is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emoscope._io import atomic_path, atomic_write_json, ensure_writable_dir
from emoscope.errors import DataError, LayerError

__all__ = ["Activations"]

_TENSORS = "activations.safetensors"
_MANIFEST = "manifest.json"


@dataclass
class Activations:
    """Residual-stream activations for a list of texts.

    ``data[l]`` is ``(n_texts, d_model)`` for pooled positions, or ``(n_tokens_total, d_model)``
    for ``all`` (rows of text ``i`` are ``offsets[i]:offsets[i+1]``).

    >>> acts = extract(model, texts, layers=[3, 5], position="last")   # doctest: +SKIP
    >>> acts.get(5).shape                                              # doctest: +SKIP
    (len(texts), model.d_model)
    """

    data: dict[int, np.ndarray]
    token_counts: np.ndarray  # (n_texts,) int64
    position: str
    manifest: dict[str, Any] = field(default_factory=dict)
    offsets: np.ndarray | None = None  # (n_texts + 1,) for position "all"
    cache_hit: bool = False

    @property
    def layers(self) -> list[int]:
        return sorted(self.data)

    @property
    def n_texts(self) -> int:
        return int(self.token_counts.shape[0])

    @property
    def d_model(self) -> int:
        return int(next(iter(self.data.values())).shape[1])

    def get(self, layer: int) -> np.ndarray:
        try:
            return self.data[layer]
        except KeyError:
            raise LayerError(f"layer {layer} was not extracted (have {self.layers})") from None

    __getitem__ = get

    def per_text(self, layer: int, i: int) -> np.ndarray:
        """Rows of text ``i`` (position ``all``) or its single row (pooled positions)."""
        x = self.get(layer)
        if self.offsets is None:
            return x[i : i + 1]
        return x[self.offsets[i] : self.offsets[i + 1]]

    @property
    def norms(self) -> dict[int, np.ndarray]:
        """L2 norm of every row, per layer."""
        return {layer: np.linalg.norm(x.astype(np.float32), axis=1) for layer, x in self.data.items()}

    def stack(self) -> np.ndarray:
        """All layers as one array ``(n_layers_extracted, n_rows, d_model)``."""
        return np.stack([self.data[layer] for layer in self.layers])

    # -- disk ---------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``activations.safetensors`` and ``manifest.json`` atomically into ``out_dir``."""
        from safetensors.numpy import save_file

        out = ensure_writable_dir(out_dir)
        tensors = {f"layer.{layer}": np.ascontiguousarray(x) for layer, x in self.data.items()}
        tensors["token_counts"] = self.token_counts.astype(np.int64)
        if self.offsets is not None:
            tensors["offsets"] = self.offsets.astype(np.int64)
        with atomic_path(out / _TENSORS) as tmp:
            save_file(tensors, str(tmp), metadata={"position": self.position})
        atomic_write_json(out / _MANIFEST, self.manifest)
        return out

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> Activations:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        out = Path(out_dir)
        if not (out / _MANIFEST).is_file() or not (out / _TENSORS).is_file():
            raise DataError(f"{out} is not an activations directory (needs {_TENSORS} and {_MANIFEST})")
        try:
            manifest = json.loads((out / _MANIFEST).read_text())
            raw = load_file(str(out / _TENSORS))
        except (ValueError, SafetensorError, OSError) as e:
            raise DataError(f"cannot read activations in {out}: {e}") from None
        data = {int(k.split(".", 1)[1]): v for k, v in raw.items() if k.startswith("layer.")}
        return cls(data=data, token_counts=raw["token_counts"], position=manifest.get("position", "?"),
                   manifest=manifest, offsets=raw.get("offsets"))
