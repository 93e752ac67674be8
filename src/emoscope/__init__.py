"""emoscope: find, measure and steer emotion and concept representations in language models.

Every number comes with the controls that say what it means. The names a workflow needs are
here; each room of the pipeline (``emoscope.datasets``, ``models``, ``activations``,
``vectors``, ``probing``, ``geometry``, ``steering``, ``introspection``, ``audit``, ``runs``,
``report``) has the rest, and ``emoscope.core`` holds what they share.

>>> import emoscope
>>> model = emoscope.load_model("smollm2-135m")          # doctest: +SKIP
>>> acts = emoscope.extract(model, ["I am so glad."], layers="all", position="last")  # doctest: +SKIP
>>> joy = emoscope.fit_vectors({15: acts.get(15)}, labels)["joy"]                    # doctest: +SKIP
>>> emoscope.SteeringSweep(model, joy, layers=[15], strengths=[0.25], prompts=prompts).run()  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from emoscope.errors import EmoscopeError  # noqa: E402

# name -> module that defines it. Lazy: importing emoscope must not import torch/transformers
# (the CLI's --help stays fast).
_EXPORTS = {
    "load_model": "emoscope.models",
    "StandardModel": "emoscope.models",
    "load_dataset": "emoscope.datasets",
    "extract": "emoscope.activations",
    "Activations": "emoscope.activations",
    "fit_vectors": "emoscope.vectors",
    "ConceptVector": "emoscope.vectors",
    "measure_unit": "emoscope.vectors",
    "probe_layers": "emoscope.probing",
    "steer": "emoscope.steering",
    "SteeringSweep": "emoscope.steering",
    "InjectionSweep": "emoscope.introspection",
    "run_spec": "emoscope.runs",
    "load_spec": "emoscope.runs",
    "Finding": "emoscope.audit",
    "write_report": "emoscope.report",
}

__all__ = ["__version__", "EmoscopeError", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'emoscope' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
