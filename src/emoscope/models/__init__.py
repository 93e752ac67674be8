"""Models: loading (embedded, local, GGUF, hub) and a uniform view over architectures.

See ``standard.py`` for the residual-stream convention (``resid[l]`` = output of block ``l``,
before the final norm).

The plumbing every analysis shares is reached by module path (not re-exported here):
``interventions`` (residual edits, token windows, hooks, ``Injector``), ``heads`` (per-head
split of the attention output), ``kvcache`` (the KV cache across transformers versions, shared
prefixes and forks), ``batching`` (padding, position ids, pad/eos ids) and ``decode`` (the
batched decode loop with one edit per row).
"""

from __future__ import annotations

from emoscope.models.loading import embedded_models, load_model, wrap_model
from emoscope.models.standard import Layout, StandardModel, known_architectures

__all__ = [
    "load_model",
    "wrap_model",
    "embedded_models",
    "StandardModel",
    "Layout",
    "known_architectures",
]
