"""What a model spec names, known without loading it: its shape, and whether two specs name
the same model. Checks that run before a model loads (a vector fitted on another model, a head
out of range) use these, so a bad input fails in a second, not after a minute of loading.

>>> same_model("gpt2", "gpt2"), same_model("org/a", "org/b")
(True, False)
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["known_depth", "peek_shape", "canonical_model", "same_model"]


def peek_shape(model: str) -> dict[str, int | None] | None:
    """``{n_layers, n_heads, d_model}`` of ``model`` without loading it: an embedded alias's
    catalogue entry (no head count there), or a local directory's ``config.json``; else ``None``."""
    from emoscope.models import embedded_models

    entry = next((m for m in embedded_models() if m["alias"] == model), None)
    if entry is not None:
        return {"n_layers": int(entry["n_layers"]), "n_heads": None, "d_model": int(entry["d_model"])}
    cfg_path = Path(model) / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(cfg, dict):
            return None
        cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg

        def first(*keys: str) -> int | None:
            return next((int(cfg[k]) for k in keys if isinstance(cfg.get(k), int) and not isinstance(cfg[k], bool)),
                        None)

        return {"n_layers": first("num_hidden_layers", "n_layer", "num_layers"),
                "n_heads": first("num_attention_heads", "n_head", "num_heads"),
                "d_model": first("hidden_size", "n_embd", "d_model")}
    return None


def known_depth(model: str) -> int | None:
    """The number of blocks of ``model`` when it can be read without loading it (an embedded alias
    or a local directory with ``config.json``, see ``peek_shape``); else ``None``."""
    shape = peek_shape(model)
    return None if shape is None else shape["n_layers"]


def canonical_model(model: str) -> str:
    """One spelling per model: an embedded alias becomes its hub id, an existing path its
    absolute path, a hub id is compared without case."""
    from emoscope.models.loading import _catalog

    text = str(model).strip()
    entry = _catalog().get(text)
    if entry is not None and entry.get("hf_id"):
        return str(entry["hf_id"]).casefold()
    path = Path(text).expanduser()
    try:
        if path.exists():
            return str(path.resolve())
    except OSError:  # a name too long for the file system is not a path
        pass
    return text.casefold()


def same_model(a: str, b: str) -> bool:
    """Whether two model specs name the same model (``smollm2-135m`` and its hub id do; ``./m``
    and ``/abs/m`` do when they are the same directory)."""
    return str(a).strip() == str(b).strip() or canonical_model(a) == canonical_model(b)
