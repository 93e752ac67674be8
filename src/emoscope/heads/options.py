"""Options and input checks of the ``heads`` stage (``emoscope.heads.stage``): what a spec's
``heads:`` section may say, and every check that runs before the model loads (malformed heads, a
screen from another model, a foreign vector, an unknown source) or right after it loads, before
any forward."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emoscope.core.stages import require_classes
from emoscope.errors import InputError

__all__ = ["HeadsOptions", "check_heads_stage", "DEFAULT_DATASET", "MODES", "load_prompts", "source_texts", "screen_class",
           "check_loaded_vector", "check_loaded_screen"]

DEFAULT_DATASET = "emotions-basic"
MODES = ("screen", "ablate", "patch")


class HeadsOptions(BaseModel):
    """Options of the ``heads`` section. Defaults: screen every head against the vector, then
    zero- and mean-ablate the top 8 against 20 random sets on 20 prompts x 32 tokens."""

    model_config = ConfigDict(extra="forbid")

    modes: list[Literal["screen", "ablate", "patch"]] = Field(default_factory=lambda: ["screen", "ablate"],
                                                              min_length=1)
    # the vector
    vector: str | None = None  # a ConceptVector .safetensors file
    allow_other_model: bool = False  # use a vector whose metadata names another model (emoscope.vectors.checks)
    emotion: str | None = None  # class of the dataset: the screened class, and the class a vector is fitted for
    baseline: str | None = None  # contrast class, or "all"; default neutral if present, else "all"
    fit_position: str = "mean_from:1"  # extraction position when fitting the vector here
    vector_layers: str | int | float | list[int | float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])
    # screening
    layers: str | int | float | list[int | float] = "all"  # blocks whose heads are screened
    direction_layer: int | None = None  # one vector layer for every head; None: the head's block (or next above)
    position: str = "last"  # read position of the screen: last, token:I, mean, mean_from:K
    n_permutations: int | None = Field(default=None, ge=1)  # None: enough for Holm over the heads to reach alpha/2
    alternative: Literal["greater", "less", "two-sided"] = "greater"  # screen test and ranking
    screen_batch_size: int = Field(default=32, ge=1)
    # which heads, and the random-head control
    heads: str = "top:8"  # top:K, L.H,L.H or L:H
    from_run: str | None = None  # a run directory with a heads screen (its table and vector)
    n_random: int = Field(default=20, ge=1)  # random head sets, each one draw of the null (core.draws)
    random_match: Literal["layer", "band", "any"] = "layer"  # band: the layers the chosen heads span
    random_test: Literal["interval", "rank"] = "interval"  # how the candidate is judged among the draws (core.draws)
    # generation
    prompts: str = "neutral-starts"  # generation prompts (the patch targets)
    n_prompts: int | None = Field(default=20, ge=1)  # None: every prompt
    chat: bool = True
    max_new_tokens: int = Field(default=32, ge=1)
    methods: list[Literal["zero", "mean"]] = Field(default_factory=lambda: ["zero", "mean"], min_length=1)
    positions: str = "all"  # ablation window: all | prompt | generated | from:K
    mean_texts: str = "neutral-corpus"  # texts whose mean head outputs mean ablation writes
    source: str | None = None  # patch source: DATASET:CLASS, a dataset or a text file
    patch_tokens: int = Field(default=1, ge=1)  # last prompt tokens patched, aligned from the end
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    scorers: list[str] = Field(default_factory=lambda: ["nrc", "vader", "perplexity", "repetition", "script"])
    target: str | None = None  # target score column; default from the emotion, e.g. nrc_anger
    probe_layer: int | None = None  # layer of the probe projection; default the vector's deepest layer
    metrics: list[str] = Field(default_factory=lambda: ["proj_gen", "target_score"], min_length=1)
    batch_rows: int = Field(default=256, ge=1)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    decoys: int = Field(default=0, ge=0)  # placebo: N decoy sets (more random sets) in the chosen heads' place

    @field_validator("heads")
    @classmethod
    def _heads(cls, v: str) -> str:
        from emoscope.heads.select import parse_heads

        return _spec(parse_heads, v)

    @field_validator("modes", "methods", "metrics")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("list each entry once")
        return v

    @field_validator("positions")
    @classmethod
    def _window(cls, v: str) -> str:
        from emoscope.models.interventions import parse_window

        return _spec(parse_window, v)

    @field_validator("position", "fit_position")
    @classmethod
    def _position(cls, v: str) -> str:
        from emoscope.activations.positions import parse_position

        return _spec(parse_position, v)


def _spec(parse: Callable[[str], Any], v: str) -> str:
    """``parse(v).spec``, the canonical spelling; an ``InputError`` becomes the ``ValueError``
    pydantic reports as a validation error."""
    try:
        return parse(v).spec
    except InputError as e:
        raise ValueError(str(e)) from None


# -- input checks (no model) ---------------------------------------------------------------------
def load_prompts(opts: HeadsOptions) -> list[str]:
    from emoscope.datasets import load_texts

    prompts = [t for t in load_texts(opts.prompts) if t.strip()]
    if not prompts:
        raise InputError(f"heads: no prompts in {opts.prompts}; give a dataset name or a file with one prompt per line")
    return prompts[: opts.n_prompts] if opts.n_prompts else prompts


def source_texts(source: str) -> tuple[list[str], str]:
    """Texts of ``DATASET:CLASS`` (a class of a dataset) or of a dataset / text file."""
    from emoscope.datasets import builtin_names, load_dataset, load_texts

    text = str(source).strip()
    name, sep, cls = text.rpartition(":")
    if sep and name and cls and (name in builtin_names() or Path(name).suffix in (".jsonl", ".csv")):
        data = load_dataset(name)
        classes = sorted(set(map(str, data.labels)))
        if cls not in classes:
            raise InputError(f"heads: source class {cls!r} is not a class of {name} (classes: {', '.join(classes)})")
        texts = [t for t, y in zip(data.texts, data.labels, strict=True) if str(y) == cls]
        return texts, f"{name}:{cls}"
    texts = [t for t in load_texts(text) if t.strip()]
    if not texts:
        raise InputError(f"heads: no source texts in {text}")
    return texts, text


def _check_vector_file(path: str, spec_model: str, allow_other_model: bool = False) -> Any:
    from emoscope.vectors.checks import load_vector_for

    return load_vector_for(path, spec_model, what="heads: vector", allow_other_model=allow_other_model)


def screen_class(opts: HeadsOptions, vector: Any, dataset: Any, dataset_name: str | None) -> tuple[str, str]:
    from emoscope.vectors.fit import resolve_baseline

    classes = list(require_classes(dataset, "heads", dataset_name))
    baseline = resolve_baseline(classes, opts.baseline, what="heads: baseline", source=dataset_name or "")
    emotion = opts.emotion or (vector.name if vector is not None else None)
    if emotion is None:
        raise InputError("heads: say which class to screen with `emotion:` (--emotion)")
    if emotion not in classes:
        raise InputError(f"heads: class {emotion!r} is not a class of {dataset_name} (classes: {', '.join(classes)})"
                         + ("; name the class with --emotion" if opts.emotion is None else ""))
    if emotion == baseline:
        raise InputError(f"heads: class {emotion!r} is also the baseline; choose another --baseline or 'all'")
    return emotion, baseline


def check_heads_stage(spec, dataset) -> None:  # noqa: ANN001 - emoscope.runs.Spec, a Dataset
    """Before any model loads (see the module docstring)."""
    from emoscope.heads.screen import load_screen
    from emoscope.heads.select import check_heads, parse_heads
    from emoscope.models.shape import peek_shape

    opts: HeadsOptions = spec.options("heads")
    modes = set(opts.modes)
    intervene = bool(modes & {"ablate", "patch"})
    hs = parse_heads(opts.heads)
    screen_meta = None
    if opts.from_run:
        table, screen_meta = load_screen(opts.from_run)
        screened_on = str(screen_meta.get("spec_model") or screen_meta.get("model") or "")
        if screened_on and screened_on != spec.model:
            raise InputError(f"heads: {opts.from_run} screened heads of {screened_on}, not {spec.model}; run the screen "
                             f"on {spec.model} or use --model {screened_on}")
        if intervene and hs.top and "screen" not in modes and hs.top > len(table):
            raise InputError(f"heads: top:{hs.top} asks for more heads than the {len(table)} screened in {opts.from_run}")
        if intervene and hs.heads:
            check_heads(hs.heads, int(screen_meta["n_layers"]), int(screen_meta["n_heads"]), spec.model)
    if intervene and hs.top and "screen" not in modes and screen_meta is None:
        raise InputError(f"heads: heads top:{hs.top} needs a screen: add 'screen' to modes or give a run with one "
                         "(--from RUN)")
    shape = peek_shape(spec.model)
    if intervene and hs.heads and shape is not None and shape["n_layers"] is not None:
        if shape["n_heads"] is not None:
            check_heads(hs.heads, shape["n_layers"], shape["n_heads"], spec.model)
        bad = [h for h in hs.heads if not 0 <= h[0] < shape["n_layers"]]
        if bad:
            raise InputError(f"head {bad[0][0]}.{bad[0][1]} is out of range for {spec.model}: it has layers "
                             f"0..{shape['n_layers'] - 1}")
    vector = _check_vector_file(opts.vector, spec.model, opts.allow_other_model) if opts.vector else None
    if opts.direction_layer is not None and vector is not None and opts.direction_layer not in vector.layers:
        raise InputError(f"heads: direction layer {opts.direction_layer} is not a layer of the vector "
                         f"(it has {vector.layers})")
    if "screen" in modes:
        if vector is None and not opts.emotion:
            raise InputError("heads: the screen needs a vector: give `vector: FILE` (--vector) or `emotion: CLASS` "
                             "(--emotion) to fit one on the dataset")
        if dataset is None:
            raise InputError("heads: the screen needs a labelled dataset; add `dataset: NAME` (--dataset)")
        screen_class(opts, vector, dataset, spec.dataset)
    elif vector is None and opts.emotion:
        if dataset is None:
            raise InputError("heads: fitting a vector for `emotion:` needs a dataset; add `dataset: NAME` (--dataset)")
        screen_class(opts, None, dataset, spec.dataset)
    if intervene:
        load_prompts(opts)
    if "patch" in modes:
        if not opts.source:
            raise InputError("heads: patching needs source prompts: `source: DATASET:CLASS` (--source), e.g. "
                             "emotions-basic:anger")
        source_texts(opts.source)
    if "ablate" in modes and "mean" in opts.methods:
        from emoscope.datasets import load_texts

        if not [t for t in load_texts(opts.mean_texts) if t.strip()]:
            raise InputError(f"heads: no texts in {opts.mean_texts} for mean ablation")


# -- the stage -----------------------------------------------------------------------------------
def check_loaded_vector(vector: Any, model: Any, where: str, allow_other_model: bool = False) -> None:
    from emoscope.vectors.checks import check_vector_fits

    check_vector_fits(vector, model, where=f"heads: vector {where}", allow_other_model=allow_other_model)


def check_loaded_screen(model: Any, meta: dict, where: str) -> None:
    sha, mine = str(meta.get("weights_sha256") or ""), str(getattr(model, "weights_sha256", "") or "")
    if sha and mine and sha != mine:
        raise InputError(f"heads: {where} screened heads of other weights than {model.name}; re-run the screen")
    if int(meta.get("n_layers", model.n_layers)) != model.n_layers or int(meta.get("n_heads", model.n_heads)) != model.n_heads:
        raise InputError(f"heads: {where} screened a model with {meta.get('n_layers')} layers x {meta.get('n_heads')} "
                         f"heads; {model.name} has {model.n_layers} x {model.n_heads}")
