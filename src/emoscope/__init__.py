"""emoscope: find, measure and steer emotion and concept representations in language models.

Every number comes with the controls that say what it means.

>>> import emoscope
>>> model = emoscope.load_model("smollm2-135m")          # doctest: +SKIP
>>> acts = emoscope.extract(model, ["I am so glad."], layers="all", position="last")  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from emoscope.errors import EmoscopeError  # noqa: E402

__all__ = ["__version__", "EmoscopeError", "load_model", "StandardModel", "extract", "Activations"]


def __getattr__(name: str):
    # Lazy: importing emoscope must not import torch/transformers (the CLI's --help stays fast).
    if name in ("load_model", "StandardModel"):
        from emoscope import models

        return getattr(models, name)
    if name in ("extract", "Activations"):
        from emoscope import activations

        return getattr(activations, name)
    raise AttributeError(f"module 'emoscope' has no attribute {name!r}")
