"""Is this vector for this model? The one check every command that reads a vector file uses.

A ``ConceptVector`` written by emoscope records the model it was fitted on (``meta["model"]``
and ``meta["weights_sha256"]``). A vector from another model is refused, in one line, unless
the user allows it (``--allow-other-model``, ``allow_other_model: true`` in the stage's
section): a direction fitted in one model's residual stream means nothing in another's, even
when the widths happen to agree. Two steps:

- ``load_vector_for(path, spec_model)`` before the model loads: the file exists and reads, the
  model it names is ``spec_model`` (compared by ``emoscope.models.shape.same_model``), and its
  width and layers fit the model's shape when that is known without loading;
- ``check_vector_fits(vector, model)`` after it loads, before any forward: the weights hash
  matches (when both are known), and the width and layers fit. Width and layers are checked
  even when another model is allowed: no flag makes a 576-wide vector fit a 640-wide stream.

A vector without a recorded model (hand-made, or from arithmetic) is taken as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emoscope.errors import InputError
from emoscope.vectors.concept import ConceptVector

__all__ = ["load_vector_for", "check_vector_fits", "fitted_model", "ALLOW_HINT"]

ALLOW_HINT = "--allow-other-model (allow_other_model: true in the spec) uses it anyway"


def fitted_model(vector: ConceptVector) -> str:
    """The model a vector records it was fitted on ("" if none)."""
    value = vector.meta.get("model")
    return value if isinstance(value, str) else ""


def _check_shape(vector: ConceptVector, where: str, model_name: str, d_model: int | None,
                 n_layers: int | None) -> None:
    if d_model is not None and vector.d != d_model:
        raise InputError(f"{where} has d_model={vector.d} but {model_name} has d_model={d_model}; "
                         "use a vector fitted on this model")
    bad = [x for x in vector.layers if n_layers is not None and not 0 <= x < n_layers]
    if bad:
        raise InputError(f"{where} has layers {bad}; {model_name} has layers 0..{n_layers - 1}")


def load_vector_for(path: str | os.PathLike[str], spec_model: str, *, what: str = "vector",
                    allow_other_model: bool = False) -> ConceptVector:
    """Read a vector file to be used with ``spec_model``, before that model loads.

    ``what`` starts the message (e.g. ``"steer: vector"``). Raises ``InputError`` for a missing
    file or a vector of another model (unless ``allow_other_model``), ``DataError`` for a
    damaged file.

    >>> import numpy as np, tempfile, pathlib
    >>> p = ConceptVector("joy", {0: np.ones(4)}, {"model": "gpt2"}).save(pathlib.Path(tempfile.mkdtemp()) / "joy")
    >>> load_vector_for(p, "org/other")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    emoscope.errors.InputError: vector .../joy.safetensors was fitted on gpt2, not org/other; ...
    >>> load_vector_for(p, "org/other", allow_other_model=True).name
    'joy'
    """
    from emoscope.models.shape import peek_shape, same_model

    where = f"{what} {path}"
    if not Path(path).is_file():
        raise InputError(f"{where} not found; give a ConceptVector .safetensors file")
    vector = ConceptVector.load(path)
    fitted = fitted_model(vector)
    if fitted and not allow_other_model and not same_model(fitted, spec_model):
        raise InputError(f"{where} was fitted on {fitted}, not {spec_model}; use a vector fitted on {spec_model} "
                         f"(or --model {fitted}); {ALLOW_HINT}")
    shape = peek_shape(spec_model)
    if shape is not None:
        _check_shape(vector, where, spec_model, shape["d_model"], shape["n_layers"])
    return vector


def check_vector_fits(vector: ConceptVector, model: Any, *, where: str = "vector",
                      allow_other_model: bool = False) -> None:
    """After ``model`` loads, before any forward: the weights it was fitted on (when recorded)
    and its width and layers. ``InputError`` otherwise."""
    fitted_sha = vector.meta.get("weights_sha256")
    model_sha = getattr(model, "weights_sha256", "") or ""
    if (isinstance(fitted_sha, str) and fitted_sha and model_sha and fitted_sha != model_sha
            and not allow_other_model):
        raise InputError(f"{where} was fitted on other weights ({fitted_model(vector) or 'unnamed'}, "
                         f"{fitted_sha[:12]}) than {model.name}'s ({model_sha[:12]}); use a vector fitted on this "
                         f"model; {ALLOW_HINT}")
    _check_shape(vector, where, model.name, int(model.d_model), int(model.n_layers))
