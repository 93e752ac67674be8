"""Checks every spec gets before its run directory is written or any model loads.

The stages' own checks (``check(spec, dataset)``, see ``emoscope.core.stages``) know what their
options mean; these know what every stage's options look like, by the names they share:

- every number is finite (a NaN strength or an infinite alpha is refused), and an option named
  ``alpha`` (a test's level) lies strictly between 0 and 1;
- an option named ``layers``, ``layer`` or ``*_layers`` / ``*_layer`` holds layers: they must read
  (``"1-"`` does not) and, when the model's depth is known without loading it (an embedded alias,
  a local directory with ``config.json``: ``emoscope.models.shape``), lie inside every model the
  stage runs on;
- an option named ``position`` or ``*_position`` holds a read position (``last``, ``mean``,
  ``mean_from:K``, ``token:I``, ``all``): it must read, must lie within the model's context when
  that is known, and a ``token:I`` / ``mean_from:K`` must fit in every text it reads (the stage's
  ``texts`` option, else the spec's dataset) by an upper bound on the token count: a token
  covers at least one byte, so a text of B UTF-8 bytes has at most B + ``SPECIAL_TOKENS`` tokens;
  ``all`` (every token, unpooled) only in a spec whose one stage is ``extract``: every other use
  needs one vector per text.
  Texts that pass the bound but are still too short once tokenised fail in the stage, with an
  error that names the text;
- an option named ``max_new_tokens`` must leave room for a prompt in the model's known context;
- the model names can be loaded (``ModelCache.check_model``; for the catalogued stages, which
  all load the spec's models) and the cache directory (``$EMOSCOPE_CACHE``) is usable.

Each failure is one ``InputError`` (or ``ModelError``, ``OutputError``) line.
"""

from __future__ import annotations

import math
from typing import Any

from emoscope.errors import InputError, LayerError, PositionError

__all__ = ["check_values", "check_models", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = 8  # tokens a tokenizer may add to a text (BOS, EOS, a lone word-start marker), with room to spare


def _is_layers(name: str) -> bool:
    return name in ("layers", "layer") or name.endswith(("_layers", "_layer"))


def _is_position(name: str) -> bool:
    return name == "position" or name.endswith("_position")


def _finite(stage: str, name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{stage} {name}: {value} is not a finite number")
    if isinstance(value, (list, tuple)):
        for v in value:
            _finite(stage, name, v)
    elif isinstance(value, dict):
        for v in value.values():
            _finite(stage, name, v)


def _layers(stage: str, name: str, value: Any, models: list[str]) -> None:
    from emoscope.models.shape import resolve_layers_unloaded
    from emoscope.models.standard import parse_layer_text

    if value is None:
        return
    try:
        if isinstance(value, str) and value.strip().lower() != "all":
            parse_layer_text(value)
        items = value if isinstance(value, list) else [value] if isinstance(value, (int, float)) else []
        bad = next((x for x in items if isinstance(x, float) and not 0.0 <= x <= 1.0), None)
        if bad is not None:
            raise LayerError(f"relative depth {bad} must lie in [0, 1]")
        for model in models:
            resolve_layers_unloaded(model, value)
    except LayerError as e:
        raise LayerError(f"{stage} {name}: {e}") from None


def _context(stage: str, name: str, n_tokens: int, models: list[str]) -> None:
    from emoscope.models.shape import peek_shape

    for model in models:
        n_ctx = (peek_shape(model) or {}).get("n_ctx")
        if n_ctx and n_tokens >= n_ctx:
            raise InputError(f"{stage} {name}: {n_tokens} new tokens do not fit in the context of {model} "
                             f"({n_ctx} tokens with the prompt); generate fewer")


def _short_text(texts: list[str], need: int) -> tuple[int, int] | None:
    """The first text whose token count is certainly below ``need`` (index, its bound), or ``None``."""
    for i, t in enumerate(texts):
        bound = len(t.encode("utf-8", "surrogatepass")) + SPECIAL_TOKENS
        if bound < need:
            return i, bound
    return None


def _position(stage: str, name: str, value: str, models: list[str], texts: list[str] | None, source: str,
              unpooled_ok: bool) -> None:
    from emoscope.activations.positions import parse_position
    from emoscope.models.shape import peek_shape

    try:
        pos = parse_position(value)
    except PositionError as e:
        raise PositionError(f"{stage} {name}: {e}") from None
    if not pos.pooled and not unpooled_ok:
        raise PositionError(f"{stage} {name} all reads every token, but this needs one vector per text; use last, "
                            "mean, mean_from:K or token:I (all is for a spec that only extracts)")
    if pos.kind not in ("token", "mean_from"):
        return
    # the tokens a text needs: token:I reads token I (or the -I-th from the end), mean_from:K needs K + 1
    need = pos.arg + 1 if pos.arg >= 0 else -pos.arg
    for model in models:
        n_ctx = (peek_shape(model) or {}).get("n_ctx")
        if n_ctx and need > n_ctx:
            raise PositionError(f"{stage} {name} {pos.spec} needs {need} tokens, beyond the context of {model} "
                                f"({n_ctx} tokens); use a smaller index, or last")
    hit = _short_text(texts or [], need)
    if hit is not None:
        i, bound = hit
        t = (texts or [])[i]
        shown = t if len(t) <= 40 else t[:37] + "..."
        raise PositionError(f"{stage} {name} {pos.spec} needs {need} tokens in every text, but text {i} of {source} "
                            f"({shown!r}) has at most {bound}; use a smaller index (token:-1 is the last token) or "
                            "another position")


def _texts(stage: str, opts: dict[str, Any], dataset: Any, dataset_name: str | None) -> tuple[list[str] | None, str]:
    if opts.get("texts"):
        from emoscope.datasets import load_texts

        return list(load_texts(opts["texts"])), str(opts["texts"])
    if dataset is not None:
        return list(dataset.texts), str(dataset_name or getattr(dataset, "name", "the dataset"))
    return None, ""


def check_values(spec: Any, stages: list[str], dataset: Any) -> None:
    """The name-based checks of the module doc, for each of ``stages``, against every model of the spec."""
    for stage in stages:
        opts = spec.options(stage)
        if opts is None:
            continue
        values = opts.model_dump() if hasattr(opts, "model_dump") else dict(opts)
        models = list(spec.all_models)
        texts: list[str] | None = None
        source = ""
        loaded = False
        for name, value in values.items():
            _finite(stage, name, value)
            if name == "alpha" and isinstance(value, (int, float)) and not 0.0 < value < 1.0:
                raise InputError(f"{stage} alpha: the level of a test must lie between 0 and 1, got {value:g}")
            if name == "max_new_tokens" and isinstance(value, int):
                _context(stage, name, value, models)
            if _is_layers(name):
                _layers(stage, name, value, models)
            elif _is_position(name) and isinstance(value, str):
                if not loaded:
                    texts, source = _texts(stage, values, dataset, spec.dataset)
                    loaded = True
                _position(stage, name, value, models, texts, source, unpooled_ok=list(spec.stages) == ["extract"])


def check_models(spec: Any, cache: Any, stages: list[str]) -> None:
    """The cache directory is usable, and, when a catalogued stage (``stages.yaml``: each loads the
    spec's models) is among ``stages``, every model of the spec can be loaded by ``cache``'s loader
    (checked without loading it). A stage registered only in this process may need no model."""
    from emoscope.core.stages import stage_catalog
    from emoscope.models.loading import check_cache_dir

    check_cache_dir()
    if any(name in stage_catalog() for name in stages):
        for model in spec.all_models:
            cache.check_model(model)
