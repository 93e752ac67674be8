"""Experiment specs: YAML validated once into a typed ``Spec``; unknown keys are errors.

A spec names a model, a seed, a dataset and an ordered list of stages. Each stage may have a
section of the same name, validated by the options model its implementation registered::

    name: demo
    model: smollm2-135m
    seed: 0
    dataset: emotions
    stages: [extract, probe]
    extract: {layers: all, position: last, batch_size: 32}

Every problem is one ``SpecError`` line naming the file, the line and the key, with the
nearest valid key when one is close (``spec.yaml:6: unknown key 'batchsize' in extract;
did you mean 'batch_size'?``).
"""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from emoscope._io import compose_yaml, load_yaml, sha256_json
from emoscope.core.stages import get_stage, known_stages
from emoscope.errors import SpecError

__all__ = ["Spec", "load_spec", "parse_spec", "builtin_specs", "spec_from_yaml", "model_key"]


_DTYPES = ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16")  # emoscope.models.resolve_dtype's
_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies


class _Core(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    model: str = Field(min_length=1)
    models: list[str] = Field(default_factory=list)
    model_dtype: str | None = None  # compute dtype of the models (default: float32 on CPU, bfloat16 on GPU)
    device_map: str | None = None  # e.g. "auto": shard the models over the GPUs (and CPU) with accelerate
    seed: int = 0
    dataset: str | None = None
    stages: list[str] = Field(min_length=1)

    @field_validator("model_dtype")
    @classmethod
    def _known_dtype(cls, v: str | None) -> str | None:
        if v is not None and v not in _DTYPES:
            raise ValueError(f"unknown dtype {v!r}; use one of {', '.join(_DTYPES)}")
        return v

    @field_validator("device_map")
    @classmethod
    def _known_device_map(cls, v: str | None) -> str | None:
        if v is not None and v not in _DEVICE_MAPS and not re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", v):
            raise ValueError(f"device_map must be one of {', '.join(_DEVICE_MAPS)} or a device such as cuda:0, got {v!r}")
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not all(ch.isalnum() or ch in "-_." for ch in v):
            raise ValueError("use letters, digits, '-', '_' or '.' (it names the run directory)")
        return v


_CORE_KEYS = list(_Core.model_fields)
_OMITTED_WHEN_UNSET = ("model_dtype", "device_map")  # keys added later: absent from to_dict() (and the hash) when None


class Spec(BaseModel):
    """A validated experiment spec.

    ``sections`` holds the raw stage sections as written; ``options(stage)`` gives the
    validated options object (or the raw mapping for a stage registered without options).

    >>> spec = parse_spec({"name": "t", "model": "smollm2-135m", "stages": ["extract"],
    ...                    "extract": {"layers": [0, 1]}})
    >>> spec.options("extract").layers
    [0, 1]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    description: str = ""
    model: str
    models: list[str] = Field(default_factory=list)
    model_dtype: str | None = None
    device_map: str | None = None
    seed: int = 0
    dataset: str | None = None
    stages: list[str]
    sections: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: published numbers the run is compared with in its report (emoscope.report.yardsticks)
    yardsticks: list[Any] = Field(default_factory=list)
    resolved: dict[str, Any] = Field(default_factory=dict, repr=False)
    source: str = "<spec>"

    def options(self, stage: str) -> Any:
        """Validated options for ``stage`` (its options model), or its raw section dict."""
        return self.resolved.get(stage, self.sections.get(stage, {}))

    def to_dict(self, resolved: bool = True) -> dict[str, Any]:
        """The spec as plain data: core keys, then one section per stage that has options."""
        data: dict[str, Any] = {k: getattr(self, k) for k in _CORE_KEYS
                                if not (k in _OMITTED_WHEN_UNSET and getattr(self, k) is None)}
        for stage in self.stages:
            opts = self.options(stage) if resolved else self.sections.get(stage)
            if isinstance(opts, BaseModel):
                opts = opts.model_dump(mode="json")
            if opts:
                data[stage] = opts
        for key, raw in self.sections.items():  # sections of stages not in `stages`, kept as written
            data.setdefault(key, raw)
        if self.yardsticks:
            data["yardsticks"] = [y.model_dump(mode="json", exclude_defaults=True) for y in self.yardsticks]
        return data

    def to_yaml(self) -> str:
        """The resolved spec as YAML (what a run directory stores in ``spec.yaml``)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @property
    def all_models(self) -> list[str]:
        """``model`` then every other entry of ``models`` (a multi-model spec has two or more)."""
        return [self.model] + [m for m in dict.fromkeys(self.models) if m != self.model]

    @property
    def model_keys(self) -> dict[str, str]:
        """Model name -> the short key that labels its stages (``probe@KEY``) and tables (``KEY.probe_layers``)."""
        return {m: model_key(m) for m in self.all_models}

    @property
    def hash(self) -> str:
        """Hash of the resolved spec (the same for a spec and its saved ``spec.yaml``). Yardsticks
        change only what the report compares with, not what runs, so they are left out."""
        data = self.to_dict()
        data.pop("yardsticks", None)
        return sha256_json(data)


def model_key(name: str) -> str:
    """A model's label in stage keys and table names: the last part of an alias, path or hub id.

    >>> model_key("smollm2-135m"), model_key("/data/models/Qwen2.5-0.5B/"), model_key("org/name:rev")
    ('smollm2-135m', 'Qwen2.5-0.5B', 'name-rev')
    """
    base = Path(str(name).rstrip("/\\")).name or str(name)
    key = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base).strip("-.") or "model"
    return key if key[0].isalnum() else "m" + key


def _line_map(text: str) -> dict[tuple[Any, ...], int]:
    """1-based line of every key / list item in a YAML document, by path."""
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    try:
        root = compose_yaml(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        lines[()] = root.start_mark.line + 1
        walk(root, ())
    return lines


class _Where:
    """Formats ``source:line: message`` for a path inside the spec."""

    def __init__(self, source: str, lines: dict[tuple[Any, ...], int]) -> None:
        self.source, self.lines = source, lines

    def __call__(self, path: tuple[Any, ...], message: str) -> SpecError:
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.lines:
                return SpecError(f"{self.source}:{self.lines[path[:cut]]}: {message}")
        return SpecError(f"{self.source}: {message}")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid keys: {', '.join(valid)}" if valid else ""


def _pydantic_error(e: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...],
                    where: _Where, section: str) -> SpecError:
    err = e.errors()[0]
    loc = tuple(err["loc"])
    path = (*prefix, *loc)
    dotted = ".".join(str(p) for p in path)
    if err["type"] == "extra_forbidden":
        parent = model
        for part in loc[:-1]:  # walk nested models to suggest from the right field list
            field = parent.model_fields.get(str(part))
            ann = getattr(field, "annotation", None)
            parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else parent
        valid = list(parent.model_fields)
        return where(path, f"unknown key {str(loc[-1])!r} in {section}{_suggest(str(loc[-1]), valid)}")
    if err["type"] == "missing":
        return where(prefix, f"missing required key {dotted!r} in {section}")
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    return where(path, f"{dotted}: {err['msg']} (got {shown})")


def _yardsticks(value: Any, where: _Where) -> list[Any]:
    """The ``yardsticks:`` list, each entry validated (one ``SpecError`` line naming the entry)."""
    from emoscope.report.yardsticks import MAX_YARDSTICKS, Yardstick

    if value is None:
        return []
    if not isinstance(value, list):
        raise where(("yardsticks",), f"yardsticks must be a list of entries, got {type(value).__name__}")
    if len(value) > MAX_YARDSTICKS:
        raise where(("yardsticks",), f"at most {MAX_YARDSTICKS} yardsticks, got {len(value)}")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise where(("yardsticks", i), f"yardsticks[{i}] must be a mapping (name, paper, reported, rule, "
                                           f"measure, ...), got {type(entry).__name__}")
        try:
            out.append(Yardstick.model_validate(entry))
        except ValidationError as e:
            raise _pydantic_error(e, Yardstick, ("yardsticks", i), where, f"yardsticks[{i}]") from None
    names = [y.name for y in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise where(("yardsticks", names.index(dup, names.index(dup) + 1)), f"yardstick name {dup!r} is used twice")
    return out


def parse_spec(data: Any, source: str = "<spec>", text: str | None = None) -> Spec:
    """Validate already-parsed YAML ``data`` into a ``Spec`` (``text`` gives line numbers).

    >>> parse_spec({"name": "t", "model": "m", "stages": ["extract"], "sead": 1})
    Traceback (most recent call last):
    ...
    emoscope.errors.SpecError: <spec>: unknown key 'sead' at the top level; did you mean 'seed'?
    """
    where = _Where(source, _line_map(text) if text else {})
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a mapping of keys (name, model, stages, ...), "
                        f"got {type(data).__name__}")
    stages_known = known_stages()
    core, sections = {}, {}
    yardsticks: list[Any] = []
    for key, value in data.items():
        if key in _CORE_KEYS:
            core[key] = value
        elif key == "yardsticks":
            yardsticks = _yardsticks(value, where)
        elif key in stages_known:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise where((key,), f"section {key!r} must be a mapping of options, got {type(value).__name__}")
            sections[key] = value
        else:
            raise where((key,), f"unknown key {str(key)!r} at the top level"
                                f"{_suggest(str(key), _CORE_KEYS + ['yardsticks'] + stages_known)}")
    try:
        c = _Core.model_validate(core)
    except ValidationError as e:
        raise _pydantic_error(e, _Core, (), where, "the spec") from None

    seen: set[str] = set()
    for i, stage in enumerate(c.stages):
        if stage not in stages_known:
            raise where(("stages", i), f"unknown stage {stage!r} in stages{_suggest(stage, stages_known)}")
        if stage in seen:
            raise where(("stages", i), f"stage {stage!r} is listed twice in stages")
        seen.add(stage)

    resolved: dict[str, Any] = {}
    for stage in c.stages:
        info = get_stage(stage)
        if info is None or info.options_model is None:
            continue
        try:
            resolved[stage] = info.options_model.model_validate(sections.get(stage, {}))
        except ValidationError as e:
            raise _pydantic_error(e, info.options_model, (stage,), where, stage) from None
    spec = Spec(**c.model_dump(), sections=sections, yardsticks=yardsticks, resolved=resolved, source=source)
    keys = list(spec.model_keys.values())
    if len(set(keys)) < len(keys):
        raise where(("models",), f"two models share the label {max(keys, key=keys.count)!r} "
                    f"({', '.join(spec.all_models)}); give them directories with different names")
    return spec


def spec_from_yaml(text: str, source: str = "<spec>") -> Spec:
    """Parse and validate YAML ``text``.

    >>> spec_from_yaml("name: t\\nmodel: m\\nstages: [extract]\\nseed: x\\n").seed
    Traceback (most recent call last):
    ...
    emoscope.errors.SpecError: <spec>:4: seed: Input should be a valid integer, unable to parse string as an integer (got 'x')
    """
    try:
        data = load_yaml(text, source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{source}{line}: not valid YAML ({problem})") from None
    return parse_spec(data, source=source, text=text)


def builtin_specs() -> dict[str, Path]:
    """Built-in spec names and their files (``emoscope/runs/specs/*.yaml``).

    >>> sorted(builtin_specs())
    ['cross-model', 'demo', 'emotions', 'extraction-modes', 'introspection', 'leakage']
    """
    folder = resources.files("emoscope.runs").joinpath("specs")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_spec(name_or_path: str | os.PathLike[str]) -> Spec:
    """Load a spec from a YAML file or by built-in name (``demo``, ``emotions``, ...).

    >>> load_spec("demo").name
    'demo'
    >>> load_spec("no-such.yaml")
    Traceback (most recent call last):
    ...
    emoscope.errors.SpecError: spec file no-such.yaml not found; give a YAML file or a built-in spec: cross-model, demo, emotions, extraction-modes, introspection, leakage
    """
    builtins = builtin_specs()
    path = Path(name_or_path)
    source = str(path)
    names = ", ".join(sorted(builtins))
    if path.is_dir():
        if (path / "spec.yaml").is_file():
            path = path / "spec.yaml"
            source = str(path)
        else:
            raise SpecError(f"{path} is a directory without spec.yaml; give a YAML file or a built-in spec: {names}")
    elif not path.exists():
        key = str(name_or_path)
        if key in builtins:
            path = builtins[key]
            source = path.name
        elif path.suffix in (".yaml", ".yml") or os.sep in key:
            raise SpecError(f"spec file {key} not found; give a YAML file or a built-in spec: {names}")
        else:
            raise SpecError(f"no built-in spec {key!r}{_suggest(key, sorted(builtins)).replace('valid keys', 'built-in specs')}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read spec {path}: {getattr(e, 'strerror', None) or e}") from None
    return spec_from_yaml(text, source=source)
