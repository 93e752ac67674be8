"""The strength unit: what "strength 1" means when a vector is added to the residual stream.

One function measures it (:func:`measure_unit`); a vector carries it in its metadata under one
key, ``meta["strength_unit"]`` (:func:`with_unit`, :func:`vector_unit`), so a saved vector says
which unit its strengths were run in. The units:

``token_norm`` (steering's default)
    The mean over tokens of ``||resid[l]||`` on neutral text (``neutral-corpus``), **leaving out
    each text's first token**. The first token is an attention sink: on SmolLM2-135M its norm at
    layer 15 is ~22,900 against ~177 for every other token, so a mean over all positions would
    make the unit ten times too large.
``token_norm_robust``
    The same mean, with the model's *massive dimensions* left out of every norm: dimensions that
    carry more than ``massive_share`` (default 5%) of the mean ``||resid[l]||^2`` (an isotropic
    dimension carries ``1/d``, about 0.2%). On Gemma-3-270M one dimension carries 82-90% of
    ``||resid||^2`` at layers 9-14, so ``token_norm`` there mostly measures that one dimension and
    "strength 1" means something else than on a model without one. Use this unit to compare
    strengths across models. The dimensions left out are stored with the unit.
``trial_norm`` (introspection's default)
    ``token_norm`` measured on the introspection trial prompt itself (first token left out)
    instead of on ``neutral-corpus``; computed by the introspection sweep with :func:`norm_profile`.
``raw``
    No unit: the vector as given.

>>> unit = measure_unit(model, [15])                        # doctest: +SKIP
>>> unit.name, round(unit.values[15], 1)                    # doctest: +SKIP
('token_norm', 176.8)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoscope.errors import InputError

__all__ = ["UNITS", "UNIT_KEY", "MEASURED", "STEERING_UNITS", "StrengthUnit", "measure_unit", "resolve_unit",
           "norm_profile", "with_unit", "vector_unit", "neutral_states", "neutral_covariance"]

UNIT_KEY = "strength_unit"
UNITS: dict[str, str] = {
    "token_norm": "mean per-token ||resid[l]|| on neutral-corpus, first token of each text left out",
    "token_norm_robust": "mean per-token ||resid[l]|| on neutral-corpus without the massive dimensions "
                         "(each > {share:.0%} of mean ||resid[l]||^2), first token of each text left out",
    "trial_norm": "mean per-token ||resid[l]|| over the introspection trial prompt, first token left out",
    "raw": "the vector as given (no unit)",
}
MEASURED = ("token_norm", "token_norm_robust")
STEERING_UNITS = (*MEASURED, "raw")
MASSIVE_SHARE = 0.05
_MEMO: dict[tuple[Any, ...], StrengthUnit] = {}


@dataclass(frozen=True)
class StrengthUnit:
    """A strength unit: ``values[layer]`` is the residual norm that strength 1 adds at that layer.

    ``massive_dims[layer]`` lists the dimensions left out (``token_norm_robust`` only).
    """

    name: str
    values: dict[int, float]
    massive_dims: dict[int, list[int]] = field(default_factory=dict)
    source: str = ""

    def to_meta(self) -> dict[str, Any]:
        return {"name": self.name, "values": {int(k): float(v) for k, v in self.values.items()},
                "massive_dims": {int(k): [int(i) for i in v] for k, v in self.massive_dims.items()},
                "source": self.source}

    @classmethod
    def from_meta(cls, d: Mapping[str, Any]) -> StrengthUnit:
        try:
            return cls(str(d["name"]), {int(k): float(v) for k, v in d["values"].items()},
                       {int(k): [int(i) for i in v] for k, v in (d.get("massive_dims") or {}).items()},
                       str(d.get("source", "")))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError(f"vector metadata {UNIT_KEY!r} is malformed: {dict(d)!r:.200}") from None


def norm_profile(hidden: np.ndarray, massive_share: float = MASSIVE_SHARE) -> dict[str, Any]:
    """Norm statistics of one layer's token states ``hidden`` ``(tokens, d)`` (sinks already
    removed): ``token_norm`` (mean ``||h||``), ``massive_dims`` (dimensions whose mean share of
    ``||h||^2`` exceeds ``massive_share``), ``token_norm_robust`` (mean norm without them),
    ``top_dim`` and ``top_dim_share`` (the dimension carrying most of ``||h||^2`` and its share).

    >>> h = np.ones((4, 100)); h[:, 7] = 100.0
    >>> p = norm_profile(h); p["massive_dims"], round(p["top_dim_share"], 3)
    ([7], 0.99)
    """
    h = np.asarray(hidden, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] == 0:
        raise InputError(f"norm_profile needs (tokens, d) states with at least one token, got {h.shape}")
    sq = h * h  # (tokens, d)
    total = sq.sum(1)  # (tokens,)
    share = (sq / np.where(total > 0, total, 1.0)[:, None]).mean(0)  # (d,)
    massive = np.flatnonzero(share > massive_share)
    rest = np.sqrt(np.clip(total - sq[:, massive].sum(1), 0.0, None))
    top = int(share.argmax())
    return {"token_norm": float(np.sqrt(total).mean()), "token_norm_robust": float(rest.mean()),
            "massive_dims": massive.tolist(), "top_dim": top, "top_dim_share": float(share[top])}


def measure_unit(model: Any, layers: Sequence[int], name: str = "token_norm", *,
                 texts: Sequence[str] | None = None, massive_share: float = MASSIVE_SHARE) -> StrengthUnit:
    """Measure unit ``name`` (``token_norm`` or ``token_norm_robust``) at ``layers`` on
    ``texts`` (default: the built-in ``neutral-corpus``), each text's first token left out.

    Measure on the unedited model (no steering hooks installed). The extraction is cached on
    disk and results are memoised per model weights, texts and layers.
    """
    if name not in MEASURED:
        raise InputError(f"unit {name!r} cannot be measured on neutral text; choose one of {MEASURED} "
                         f"(units: {', '.join(UNITS)})")
    layers = sorted({model.check_layer(int(layer)) for layer in layers})
    if not layers:
        raise InputError("measure_unit needs at least one layer")
    source = "neutral-corpus" if texts is None else f"{len(texts)} given texts"
    if texts is None:
        from emoscope.datasets import load_dataset

        texts = list(load_dataset("neutral-corpus").texts)
    texts = list(texts)
    weights = str(getattr(model, "weights_sha256", "") or "")
    # memoised only for models with a weights hash (the on-disk cache keys on it too); a model
    # without one may be edited between calls
    key = (weights, hash(tuple(texts)), tuple(layers), name, massive_share)
    if weights and key in _MEMO:
        return _MEMO[key]
    states = neutral_states(model, layers, texts)
    values, massive = {}, {}
    for layer in layers:
        prof = norm_profile(states[layer], massive_share)
        values[layer] = prof[name]
        if name == "token_norm_robust":
            massive[layer] = prof["massive_dims"]
    unit = StrengthUnit(name, values, massive, UNITS[name].format(share=massive_share).replace(
        "neutral-corpus", source))
    if weights:
        _MEMO[key] = unit
    return unit


def vector_unit(vector: Any, name: str) -> StrengthUnit | None:
    """The unit ``name`` stored in a ``ConceptVector``'s metadata, or ``None``."""
    stored = (getattr(vector, "meta", None) or {}).get(UNIT_KEY)
    if not stored:
        return None
    unit = StrengthUnit.from_meta(stored)
    return unit if unit.name == name else None


def with_unit(vector: Any, unit: StrengthUnit) -> Any:
    """A copy of ``vector`` whose metadata carries ``unit`` (merged with stored values of the
    same unit; a different unit replaces the stored one)."""
    from emoscope.vectors.concept import ConceptVector

    old = vector_unit(vector, unit.name)
    if old is not None:
        unit = StrengthUnit(unit.name, {**old.values, **unit.values}, {**old.massive_dims, **unit.massive_dims},
                            unit.source or old.source)
    return ConceptVector(vector.name, dict(vector.vectors), {**vector.meta, UNIT_KEY: unit.to_meta()})


def resolve_unit(model: Any, vector: Any, layers: Sequence[int], name: str = "token_norm",
                 norms: Mapping[int, float] | None = None) -> StrengthUnit:
    """Unit ``name`` at ``layers`` for ``vector``: the given ``norms``, else the values stored in
    the vector, else measured (:func:`measure_unit`) for the layers still missing."""
    if name not in MEASURED:
        raise InputError(f"unit {name!r} has no norm to resolve; measured units are {MEASURED}")
    layers = [int(x) for x in layers]
    if norms is not None:
        have = StrengthUnit(name, {int(k): float(v) for k, v in norms.items()}, source="given")
    else:
        have = vector_unit(vector, name) or StrengthUnit(name, {})
    missing = [x for x in layers if x not in have.values]
    if missing:
        new = measure_unit(model, missing, name)
        have = StrengthUnit(name, {**have.values, **new.values}, {**have.massive_dims, **new.massive_dims},
                            have.source or new.source)
    return StrengthUnit(name, {x: have.values[x] for x in layers},
                        {x: have.massive_dims[x] for x in layers if x in have.massive_dims}, have.source)


def neutral_states(model: Any, layers: Sequence[int], texts: Sequence[str] | None = None) -> dict[int, np.ndarray]:
    """``{layer: (tokens, d)}``: ``resid[l]`` at every token of ``texts`` (default
    ``neutral-corpus``) except each text's first (the attention sink). The extraction is cached
    on disk for models with a weights hash."""
    from emoscope.activations import extract

    if texts is None:
        from emoscope.datasets import load_dataset

        texts = list(load_dataset("neutral-corpus").texts)
    layers = sorted({model.check_layer(int(layer)) for layer in layers})
    weights = bool(getattr(model, "weights_sha256", ""))
    acts = extract(model, list(texts), layers, position="all", cache=weights, progress=False)
    offsets = np.asarray(acts.offsets)
    keep = np.ones(int(offsets[-1]), dtype=bool)
    keep[offsets[:-1]] = False  # the first token of every text (attention sink)
    if not keep.any():  # one-token texts only: nothing but sinks, use everything
        keep[:] = True
    return {layer: np.asarray(acts.get(layer))[keep] for layer in layers}


def neutral_covariance(model: Any, layers: Sequence[int], texts: Sequence[str] | None = None) -> dict[int, np.ndarray]:
    """``{layer: (d, d)}`` covariance of ``resid[l]`` over neutral tokens (sinks left out): what
    covariance-matched random directions (``emoscope.core.directions``) are drawn from."""
    return {layer: np.cov(x.astype(np.float64), rowvar=False) for layer, x in neutral_states(model, layers, texts).items()}
