"""What a model spec names, known without loading it: its shape, and whether two specs name
the same model. Checks that run before a model loads (a vector fitted on another model, a head
out of range) use these, so a bad input fails in a second, not after a minute of loading.

>>> same_model("gpt2", "gpt2"), same_model("org/a", "org/b")
(True, False)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["known_depth", "peek_shape", "known_chat_template", "resolve_layers_unloaded", "canonical_model",
           "same_model"]

_SHAPE_KEYS = ("n_layers", "n_heads", "d_model", "n_ctx", "vocab_size")


def peek_shape(model: str) -> dict[str, int | None] | None:
    """``{n_layers, n_heads, d_model, n_ctx, vocab_size}`` of ``model`` without loading it: an
    embedded alias's catalogue entry, or a local directory's ``config.json`` (a key it lacks is
    ``None``); else ``None``.

    >>> peek_shape("smollm2-135m")["n_layers"], peek_shape("no-such-model") is None
    (30, True)
    """
    from emoscope.models.loading import catalog_entry

    entry = catalog_entry(str(model))
    if entry is not None:
        return {k: (int(entry[k]) if entry.get(k) is not None else None) for k in _SHAPE_KEYS}
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
                "d_model": first("hidden_size", "n_embd", "d_model"),
                "n_ctx": first("max_position_embeddings", "n_positions", "n_ctx"),
                "vocab_size": first("vocab_size")}
    return None


def known_chat_template(model: str) -> bool | None:
    """Whether ``model`` has a chat template, known without loading it (the catalogue, or a local
    directory's tokenizer files); ``None`` when unknown."""
    from emoscope.models.loading import catalog_entry

    entry = catalog_entry(str(model))
    if entry is not None:
        return bool(entry.get("chat_template"))
    folder = Path(str(model))
    cfg = folder / "tokenizer_config.json"
    if not folder.is_dir() or not cfg.is_file():
        return None
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return bool(data.get("chat_template")) if isinstance(data, dict) else None


class _Depth:
    """Stands in for a model when only its depth is known: the model's own layer resolution."""

    def __init__(self, name: str, n_layers: int) -> None:
        self.name, self.n_layers = name, n_layers

    def check_layer(self, layer: int) -> int:
        from emoscope.models.standard import StandardModel

        return StandardModel.check_layer(self, layer)  # type: ignore[arg-type]

    def resolve_layers(self, layers: Any) -> list[int]:
        from emoscope.models.standard import StandardModel

        return StandardModel.resolve_layers(self, layers)  # type: ignore[arg-type]


def resolve_layers_unloaded(model: str, layers: Any) -> list[int] | None:
    """``layers`` resolved as ``model.resolve_layers`` would, when the model's depth is known
    without loading it (else ``None``); a layer past the model is a one-line ``LayerError``.

    >>> resolve_layers_unloaded("smollm2-135m", "0-2,-1")
    [0, 1, 2, 29]
    """
    depth = known_depth(model)
    return None if depth is None else _Depth(str(model), depth).resolve_layers(layers)


def known_depth(model: str) -> int | None:
    """The number of blocks of ``model`` when it can be read without loading it (an embedded alias
    or a local directory with ``config.json``, see ``peek_shape``); else ``None``."""
    shape = peek_shape(model)
    return None if shape is None else shape["n_layers"]


def canonical_model(model: str) -> str:
    """One spelling per model: an embedded alias becomes its hub id, an existing path its
    absolute path, a hub id is compared without case."""
    from emoscope.models.loading import catalog_entry

    text = str(model).strip()
    entry = catalog_entry(text)
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
