"""``StandardModel``: one vocabulary over architectures.

Residual-stream convention (used everywhere in emoscope):
    ``resid[l]`` is the output hidden state of decoder block ``l`` (0-based), *before* any
    final norm. ``resid[n_layers - 1]`` is therefore NOT ``hidden_states[-1]`` from
    transformers (that one has the final norm applied); ``hidden_states[l + 1] == resid[l]``
    for every other ``l``.

Layer names come from the explicit table in ``layouts.yaml``; a layout is checked at load
with a dummy forward, and an unknown architecture fails with a message naming how to pass a
``Layout``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
import yaml
from torch import nn

from emoscope.errors import LayerError, LayoutError

__all__ = ["Layout", "StandardModel", "get_layout", "known_architectures", "block_output"]


@dataclass(frozen=True)
class Layout:
    """Attribute paths for one architecture family (see ``layouts.yaml``).

    >>> Layout(base="model", embed="model.embed_tokens", blocks="model.layers",
    ...        attn="self_attn", attn_out="self_attn.o_proj", final_norm="model.norm",
    ...        unembed="lm_head").blocks
    'model.layers'
    """

    base: str
    embed: str
    blocks: str
    attn: str
    attn_out: str
    final_norm: str
    unembed: str


@functools.cache
def _layout_table() -> dict[str, Layout]:
    raw = yaml.safe_load(resources.files("emoscope.models").joinpath("layouts.yaml").read_text())
    table: dict[str, Layout] = {}
    for name, entry in raw.items():
        if "same_as" in entry:
            entry = raw[entry["same_as"]]
        table[name] = Layout(**entry)
    return table


def known_architectures() -> list[str]:
    return sorted(_layout_table())


def get_layout(model_type: str) -> Layout:
    try:
        return _layout_table()[model_type]
    except KeyError:
        raise LayoutError(
            f"no layout for architecture {model_type!r} (known: {', '.join(known_architectures())}); "
            "pass one with load_model(..., layout=Layout(base=..., embed=..., blocks=..., attn=..., "
            "attn_out=..., final_norm=..., unembed=...))"
        ) from None


def _get(module: nn.Module, path: str) -> Any:
    obj: Any = module
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def block_output(output: Any) -> torch.Tensor:
    """The hidden state from a decoder block's forward output (a tensor or a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def parse_layer_text(text: str, *, strict: bool = True) -> list[int | float]:
    """The items of a comma layer spec: ints (``"-1"``), ranges (``"0-14"``) and relative depths
    (``"0.5"``, floats). An unreadable part raises ``LayerError``, or is skipped when ``strict``
    is False (checks that look only at the absolute indices).

    >>> parse_layer_text("0-2,-1,0.5")
    [0, 1, 2, -1, 0.5]
    >>> parse_layer_text("3,x", strict=False)
    [3]
    """
    items: list[int | float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
            try:
                items.extend(range(int(lo), int(hi) + 1))
                continue
            except ValueError:
                pass
        try:
            items.append(float(part) if "." in part else int(part))
        except ValueError:
            if strict:
                raise LayerError(f"cannot read layer {part!r}; use e.g. 'all', '0,5,10', '0-14' or '0.5'") from None
    return items


@dataclass(eq=False)
class StandardModel:
    """A causal LM with its tokenizer and a uniform view of its parts.

    Attributes mirror the pipeline's needs: ``n_layers``, ``d_model``, ``n_heads``,
    ``blocks[i]``, ``attn_out(i)``, ``final_norm``, ``unembed``, ``tokenizer``.

    >>> model = load_model("smollm2-135m")            # doctest: +SKIP
    >>> model.n_layers, model.d_model                 # doctest: +SKIP
    (30, 576)
    """

    hf: nn.Module
    tokenizer: Any
    name: str
    layout: Layout
    source: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        cfg = self.hf.config
        cfg = getattr(cfg, "text_config", None) or cfg
        self.config = cfg
        self.architecture: str = cfg.model_type
        try:
            self.base: nn.Module = _get(self.hf, self.layout.base)
            self.embed: nn.Module = _get(self.hf, self.layout.embed)
            self.blocks: nn.ModuleList = _get(self.hf, self.layout.blocks)
            self.final_norm: nn.Module = _get(self.hf, self.layout.final_norm)
            self.unembed: nn.Module = _get(self.hf, self.layout.unembed)
            for i in (0, len(self.blocks) - 1):
                _get(self.blocks[i], self.layout.attn_out)
                _get(self.blocks[i], self.layout.attn)
        except AttributeError as e:
            raise LayoutError(
                f"layout for {self.architecture!r} does not match the model ({e}); "
                "pass a corrected Layout to load_model(..., layout=...)"
            ) from None
        self.n_layers: int = len(self.blocks)
        self.d_model: int = int(
            getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or self.embed.weight.shape[1]
        )
        self.n_heads: int = int(
            getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 0
        )
        self.head_dim: int = int(getattr(cfg, "head_dim", None) or self.d_model // max(self.n_heads, 1))
        if getattr(self.tokenizer, "pad_token_id", None) is None:
            # Extraction masks padding, so any id works; eos is the usual choice.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.hf.eval()

    # -- parts ------------------------------------------------------------------------
    def attn(self, layer: int) -> nn.Module:
        return _get(self.blocks[self.check_layer(layer)], self.layout.attn)

    def attn_out(self, layer: int) -> nn.Module:
        """The attention output projection of block ``layer`` (input: concatenated heads)."""
        return _get(self.blocks[self.check_layer(layer)], self.layout.attn_out)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return int(self.unembed.weight.shape[0])

    # -- layers -----------------------------------------------------------------------
    def check_layer(self, layer: int) -> int:
        """Return ``layer`` as a non-negative index, or raise ``LayerError``. Negative counts
        from the end (``-1`` is the last block)."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise LayerError(f"layer must be an integer, got {layer!r}")
        idx = layer + self.n_layers if layer < 0 else layer
        if not 0 <= idx < self.n_layers:
            raise LayerError(
                f"layer {layer} is out of range for {self.name} (valid: 0..{self.n_layers - 1})"
            )
        return idx

    def resolve_layers(self, layers: Any) -> list[int]:
        """Layers from ``"all"``, an int, a list, a comma string ``"0,5,-1"``, a range
        ``"0-14"``, or relative depths in (0, 1) given as floats (``0.5`` = middle layer).

        >>> m.resolve_layers("0-2,-1")   # doctest: +SKIP
        [0, 1, 2, 29]
        """
        if layers is None or (isinstance(layers, str) and layers.strip().lower() == "all"):
            return list(range(self.n_layers))
        if isinstance(layers, str):
            layers = parse_layer_text(layers)
        if isinstance(layers, (int, float)):
            layers = [layers]
        out: list[int] = []
        for layer in layers:
            if isinstance(layer, float):  # relative depth
                if not 0.0 <= layer <= 1.0:
                    raise LayerError(f"relative depth {layer} must lie in [0, 1]")
                layer = min(int(round(layer * self.n_layers)), self.n_layers - 1)
            out.append(self.check_layer(layer))
        if not out:
            raise LayerError("no layers requested")
        return sorted(set(out))

    # -- chat templates ---------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat(self, messages: list[dict[str, str]] | str, *, add_generation_prompt: bool = True) -> str:
        """Format messages with the model's chat template; plain text when it has none.

        A single string is treated as one user message. Without a template, turns are
        written as ``"User: ...\\n\\nAssistant: ..."`` so base models see a readable dialogue.

        >>> m.chat("Tell me about joy.")           # doctest: +SKIP
        '<|im_start|>user\\nTell me about joy.<|im_end|>\\n<|im_start|>assistant\\n'
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        text = "\n\n".join(parts)
        if add_generation_prompt:
            text += "\n\nAssistant:"
        return text

    def __repr__(self) -> str:
        return (
            f"StandardModel({self.name!r}, arch={self.architecture}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, n_heads={self.n_heads}, dtype={self.dtype}, device={self.device})"
        )

    # -- validation -------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self) -> None:
        """Dummy forward: every block returns ``(1, T, d_model)``; the final norm and the
        unembedding map it to ``(1, T, vocab)``. Raises ``LayoutError`` otherwise."""
        shapes: dict[int, tuple[int, ...]] = {}
        hooks = [
            blk.register_forward_hook(lambda _m, _i, o, i=i: shapes.__setitem__(i, tuple(block_output(o).shape)))
            for i, blk in enumerate(self.blocks)
        ]
        try:
            ids = torch.tensor([[self.tokenizer.eos_token_id or 0] * 3], device=self.device)
            self.base(input_ids=ids, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        want = (1, 3, self.d_model)
        bad = {i: s for i, s in shapes.items() if s != want}
        if len(shapes) != self.n_layers or bad:
            raise LayoutError(
                f"layout check failed for {self.architecture!r}: expected every block to output {want}, "
                f"got {bad or f'{len(shapes)} of {self.n_layers} blocks run'}; pass a corrected Layout"
            )
        h = torch.zeros(1, 1, self.d_model, device=self.device, dtype=self.dtype)
        logits = self.unembed(self.final_norm(h))
        if logits.shape[-1] != self.vocab_size:
            raise LayoutError(f"unembedding of {self.architecture!r} returned shape {tuple(logits.shape)}")
