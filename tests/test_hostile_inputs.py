"""Hostile and broken input: every failure is one ``EmoscopeError`` line (exit code 2 in the CLI),
never a traceback, never a hang, and never a partial file. Examples for the known attacks, then
property-based tests (hypothesis) over the spec parser, the dataset loaders, the vector loader
and CLI argument parsing."""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emoscope.cli.main import main
from emoscope.errors import EmoscopeError, SpecError
from emoscope.runs.spec import spec_from_yaml
from emoscope.vectors import ConceptVector
from tests.helpers import tally

# EMOSCOPE_FUZZ_SCALE=10 runs ten times the examples (a soak run); the default keeps the file under a minute
SCALE = max(1, int(os.environ.get("EMOSCOPE_FUZZ_SCALE", "1")))
FAST = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _count(name: str) -> None:
    """How many inputs of each kind were tried (printed in the session's terminal summary)."""
    tally("hostile inputs tried", name)


def _outcome(name: str) -> None:
    """How the property inputs ended: loaded / refused in one line."""
    tally("hostile input outcomes", name)


def alias_bomb(levels: int = 9) -> str:
    """The classic "billion laughs": each level repeats the one before nine times (~400 bytes)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "name: bomb\nmodel: m\nstages: [extract]\n" + "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_once():
    text = alias_bomb()
    assert len(text) < 800
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="aliases") as err:
        spec_from_yaml(text, source="bomb.yaml")
    assert time.perf_counter() - t0 < 5  # (it used to take minutes and 10 GB)
    assert "\n" not in str(err.value) and str(err.value).startswith("bomb.yaml:")


def test_alias_bomb_through_the_cli_is_one_line_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    rc = main(["run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "aliases" in err
    assert not (tmp_path / "out").exists()


def test_python_tags_and_oversized_specs_are_refused():
    with pytest.raises(SpecError):
        spec_from_yaml("name: t\nmodel: !!python/object/apply:os.system ['echo hi']\nstages: [extract]\n")
    big = "name: t\nmodel: m\nstages: [extract]\ndescription: " + "x" * 1_100_000 + "\n"
    with pytest.raises(SpecError, match="larger than"):
        spec_from_yaml(big)


# -- property tests ----------------------------------------------------------------------------

yaml_scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=20), st.booleans(),
                         st.none())
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
KEYS = ["name", "model", "seed", "dataset", "stages", "extract", "probe", "steer", "introspect", "vectors",
        "geometry", "description", "models", "bogus"]


@FAST
@given(st.dictionaries(st.sampled_from(KEYS), yaml_values, max_size=8))
def test_any_spec_mapping_is_valid_or_one_spec_error(data):
    import yaml

    _count("spec documents")
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        spec_from_yaml(text, source="fuzz.yaml")
    except SpecError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.yaml")


@FAST
@given(st.text(max_size=300))
def test_any_text_as_a_spec_is_valid_or_one_spec_error(text):
    _count("spec texts")
    try:
        spec_from_yaml(text, source="fuzz.yaml")
    except SpecError as e:
        assert "\n" not in str(e)


row_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@FAST
@given(st.lists(st.tuples(row_text, st.sampled_from(["joy", "neutral", "", "a,b", "1"]),
                          st.sampled_from(["train", "test", "", "oops"])), max_size=12),
       st.sampled_from(["jsonl", "csv"]), st.booleans())
def test_user_dataset_files_load_or_give_one_data_error(tmp_path_factory, rows, fmt, broken):
    import csv

    from emoscope.datasets import load_dataset

    _count("dataset files")
    path = tmp_path_factory.mktemp("ds") / f"data.{fmt}"
    if fmt == "jsonl":
        lines = [json.dumps({"text": t, "label": y, "split": s}) for t, y, s in rows]
        if broken:
            lines.append('{"text": "unterminated')
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label", "split"] if not broken else ["txt", "lab"])
            w.writerows(rows)
    try:
        ds = load_dataset(str(path))
    except EmoscopeError as e:
        assert "\n" not in str(e).strip()
        return
    assert len(ds.texts) == len(ds.labels) and all(isinstance(t, str) and t.strip() for t in ds.texts)


@FAST
@given(st.binary(max_size=400))
def test_non_utf8_and_garbage_files_give_one_data_error(tmp_path_factory, blob):
    from emoscope.datasets import load_dataset

    _count("garbage files")
    path = tmp_path_factory.mktemp("g") / "data.jsonl"
    path.write_bytes(blob)
    try:
        load_dataset(str(path))
    except EmoscopeError as e:
        assert "\n" not in str(e).strip()


@FAST
@given(st.integers(0, 200), st.sampled_from(["truncate", "nan", "shape", "header", "ok"]))
def test_vector_files_load_or_give_one_error(tmp_path_factory, cut, damage):
    _count("vector files")
    folder = tmp_path_factory.mktemp("v")
    arr = np.arange(8, dtype=np.float32) + 1
    if damage == "nan":
        arr[3] = np.nan
    path = ConceptVector("joy", {2: arr}, {"model": "m"}).save(folder / "joy") if damage != "nan" else None
    if damage == "nan":  # writing refuses non-finite values already; plant one in the file's bytes instead
        path = ConceptVector("joy", {2: np.ones(8, dtype=np.float32)}, {}).save(folder / "joy")
        raw = bytearray(path.read_bytes())
        raw[-4:] = np.array([np.nan], dtype=np.float32).tobytes()
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:cut])
    elif damage == "header":
        raw = bytearray(path.read_bytes())
        raw[8 + min(cut, 20)] = ord("}")
        path.write_bytes(bytes(raw))
    elif damage == "shape":
        from safetensors.numpy import save_file

        save_file({"layer.2": np.ones((2, 3), dtype=np.float32)}, str(path))
    try:
        v = ConceptVector.load(path)
    except EmoscopeError as e:
        assert "\n" not in str(e).strip()
        return
    assert damage == "ok" and v.layers == [2] and np.all(np.isfinite(v[2]))


flag_values = st.one_of(st.text(max_size=12), st.sampled_from(["-1", "0", "nan", "inf", "1e309", "--", "all", "x,y"]))


@settings(max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["steer", "probe", "extract", "introspect"]), flags=
       st.lists(st.tuples(st.sampled_from(["--layers", "--strengths", "--n-prompts", "--max-new-tokens", "--position",
                                           "--folds", "--n-random", "--unit", "--window", "--seed", "--bogus"]),
                          flag_values), max_size=4))
def test_cli_arguments_give_one_line_and_exit_2(tmp_path_factory, monkeypatch, capsys, command, flags):
    """Any flag values: the command returns 0 or 2 (argparse errors included, never SystemExit
    escaping main), and a failure is one line on stderr."""
    import emoscope.models

    _count("CLI argument lists")

    def no_model(*a, **k):
        raise EmoscopeError("model load reached (the arguments were accepted)")

    monkeypatch.setattr(emoscope.models, "load_model", no_model)
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["-q", command, "--model", "m", "--out", str(out)]
    if command == "steer":
        argv += ["--emotion", "anger"]
    if command in ("probe", "extract"):
        argv += ["--dataset", "emotions-basic"]
    for k, v in flags:
        argv += [k, v]
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # pragma: no cover - the failure this test exists for
        raise AssertionError(f"argparse exited instead of returning: {e}") from None
    err = capsys.readouterr().err.strip()
    assert rc in (0, 2), (argv, err)
    if rc == 2:
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err


# -- dataset loaders: any JSON values, any CSV cells, huge fields, any bytes ---------------------

def _one_line(exc: EmoscopeError) -> None:
    msg = str(exc)
    assert msg.strip() and "\n" not in msg and "\r" not in msg, repr(msg)
    assert len(msg) < 1000, f"error message of {len(msg)} characters echoes too much input"


def _check_loaded(path) -> None:
    """``load_dataset`` and ``load_texts`` give a clean value or one ``EmoscopeError`` line."""
    from emoscope.datasets import load_dataset, load_texts
    from emoscope.datasets._dataset import VALID_SPLITS

    try:
        ds = load_dataset(str(path))
    except EmoscopeError as e:
        _one_line(e)
        _outcome("datasets refused")
    else:
        _outcome("datasets loaded")
        assert len(ds.texts) == len(ds.labels) > 0
        for t, y in zip(ds.texts, ds.labels, strict=True):
            assert isinstance(t, str) and t.strip() and isinstance(y, str) and y
            t.encode("utf-8")  # no lone surrogates reach a tokenizer
        assert ds.splits is None or set(ds.splits) <= set(VALID_SPLITS)
        assert len(ds.sha256) == 64
    try:
        texts = load_texts(str(path))
    except EmoscopeError as e:
        _one_line(e)
    else:
        assert texts and all(isinstance(t, str) and t.strip() for t in texts)
        for t in texts:
            t.encode("utf-8")


any_char_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=30)  # surrogates, NUL, controls
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), any_char_text,
              st.sampled_from(["joy", "neutral", "train", "test", "val", " ", ""])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
RAW_LINES = ['{"text": 1' + "0" * 5000 + ', "label": "joy"}', "[" * 3000 + "]" * 3000, '{"text": "a", "label": "j"',
             "\ufeff{}", "null", '"just a string"', "{}", '{"text": "\\ud800", "label": "j"}', "\x00"]
records = st.one_of(st.dictionaries(st.sampled_from(["text", "label", "split", "group", "extra"]), json_values,
                                    max_size=5),
                    json_values, st.sampled_from(RAW_LINES))


@FAST
@given(st.lists(records, max_size=6), st.booleans())
def test_jsonl_with_any_json_values_loads_or_gives_one_line(tmp_path_factory, recs, blank_lines):
    _count("JSONL datasets (any JSON values)")
    lines = [r if isinstance(r, str) and r in RAW_LINES else json.dumps(r) for r in recs]
    text = ("\n\n" if blank_lines else "\n").join(lines)
    path = tmp_path_factory.mktemp("j") / "d.jsonl"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check_loaded(path)


csv_cells = st.one_of(any_char_text, st.sampled_from(["joy", "neutral", "train", "oops", "", "a,b", '"', 'x"y',
                                                       "line\nbreak", "\r", "\x00", "1"]))
HEADERS = ["text", "label", "split", "group", "", " text ", "TEXT", "x", "text"]


@FAST
@given(st.lists(st.sampled_from(HEADERS), max_size=5), st.lists(st.lists(csv_cells, max_size=6), max_size=6),
       st.sampled_from(["csv-module", "raw", "raw-crlf"]))
def test_csv_with_any_cells_loads_or_gives_one_line(tmp_path_factory, header, rows, how):
    import csv
    import io

    _count("CSV datasets (any cells, quoted or raw)")
    if how == "csv-module":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        text = buf.getvalue()
    else:
        nl = "\r\n" if how == "raw-crlf" else "\n"
        text = nl.join(",".join(r) for r in [header, *rows])
    path = tmp_path_factory.mktemp("c") / "d.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check_loaded(path)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([131_071, 131_073, 1_000_000, 20_000_000]), st.sampled_from(["csv", "jsonl", "txt"]),
       st.booleans())
def test_huge_fields_load_or_give_one_line(tmp_path_factory, size, fmt, unclosed_quote):
    """Cells past Python's csv limit (131072) up to 16M characters load; longer ones (or a
    runaway quote) are one line. Token truncation happens later (see test_hostile_context)."""
    _count("huge-field datasets")
    big = "word " * (size // 5)
    folder = tmp_path_factory.mktemp("h")
    if fmt == "csv":
        text = f'text,label\n{"" if not unclosed_quote else chr(34)}{big},joy\nshort,neutral\n'
    elif fmt == "jsonl":
        text = json.dumps({"text": big, "label": "joy"}) + "\n" + ('{"text": "' + big if unclosed_quote else "")
    else:
        text = big + "\nshort\n"
    path = folder / f"d.{fmt}"
    path.write_text(text, encoding="utf-8")
    if fmt == "txt":
        from emoscope.datasets import load_texts

        assert load_texts(str(path))[1] == "short"
        return
    _check_loaded(path)


@FAST
@given(st.text(max_size=60), st.sampled_from(["utf-16", "latin-1", "cp1252", "utf-8-sig", "utf-32"]),
       st.sampled_from(["csv", "jsonl", "txt"]))
def test_other_encodings_give_one_line(tmp_path_factory, body, encoding, fmt):
    _count("datasets in other encodings")
    text = {"csv": f"text,label\n\"{body}\",joy\n", "jsonl": json.dumps({"text": body, "label": "joy"}) + "\n",
            "txt": body + "\n"}[fmt]
    path = tmp_path_factory.mktemp("e") / f"d.{fmt}"
    try:
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check_loaded(path) if fmt != "txt" else None
    if fmt == "txt":
        from emoscope.datasets import load_texts

        try:
            assert all(isinstance(t, str) for t in load_texts(str(path)))
        except EmoscopeError as e:
            _one_line(e)


# -- the vector loader: any tensors, any header, any byte damage ------------------------------------

from hypothesis.extra import numpy as hnp  # noqa: E402

TENSOR_KEYS = ["layer.0", "layer.1", "layer.2", "layer.-1", "layer.01", "layer.x", "layer.", "foo", "layer.1.2",
               "layer.99999999999999999999"]
tensors = st.dictionaries(
    st.sampled_from(TENSOR_KEYS),
    hnp.arrays(dtype=st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.uint8, np.bool_]),
               shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4),
               elements=None),
    max_size=3)
plausible_tensors = st.integers(1, 6).flatmap(lambda d: st.dictionaries(
    st.sampled_from(["layer.0", "layer.1", "layer.2", "layer.-1", "layer.7"]),
    hnp.arrays(dtype=st.sampled_from([np.float16, np.float32, np.float64]), shape=st.sampled_from([(d,), (d,), (d + 1,)]),
               elements=st.one_of(st.floats(-1e4, 1e4, width=16), st.floats(width=16))),
    min_size=1, max_size=3))
tensors = st.one_of(tensors, plausible_tensors)
header_dicts = st.fixed_dictionaries({}, optional={"format_version": json_values, "name": json_values,
                                                   "meta": json_values, "int_keyed_meta": json_values})
near_valid_headers = st.fixed_dictionaries(
    {"format_version": st.sampled_from([1, 1, 2, "1"]), "name": st.sampled_from(["joy", "joy", "", "x" * 300]),
     "meta": st.fixed_dictionaries({}, optional={"model": json_values, "weights_sha256": json_values,
                                                 "layer_norms": json_values, "mean_resid_norm": json_values})},
    optional={"int_keyed_meta": json_values}).map(json.dumps)
headers = st.one_of(st.none(), any_char_text, header_dicts.map(json.dumps), near_valid_headers)


def _check_vector_file(path) -> None:
    """``ConceptVector.load`` (and the model check) give a clean vector or one ``EmoscopeError`` line."""
    from emoscope.vectors.checks import load_vector_for

    try:
        v = ConceptVector.load(path)
    except EmoscopeError as e:
        _one_line(e)
        _outcome("vectors refused")
        return
    _outcome("vectors loaded")
    assert v.layers == sorted(v.layers) and v.layers
    for layer in v.layers:
        assert v[layer].ndim == 1 and v[layer].shape == (v.d,) and np.issubdtype(v[layer].dtype, np.floating)
        assert np.all(np.isfinite(v[layer]))
    back = ConceptVector.load(v.save(path.with_name("again")))  # whatever loads also saves and reloads
    assert back.equals(v)
    try:
        load_vector_for(path, "some/model")
    except EmoscopeError as e:
        _one_line(e)


def _write_and_check(tmp_path_factory, arrays, header) -> None:
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("t") / "v.safetensors"
    try:
        save_file({k: np.ascontiguousarray(a) for k, a in arrays.items()}, str(path),
                  metadata=None if header is None else {"emoscope": header})
    except Exception:  # noqa: BLE001 - what safetensors itself cannot write is not a loader input
        return
    _check_vector_file(path)


@FAST
@given(tensors, headers)
def test_any_safetensors_content_loads_or_gives_one_line(tmp_path_factory, arrays, header):
    _count("vector files (any tensors and metadata)")
    _write_and_check(tmp_path_factory, arrays, header)


@FAST
@given(plausible_tensors, near_valid_headers)
def test_near_valid_vector_files_load_or_give_one_line(tmp_path_factory, arrays, header):
    """Well-formed files with odd contents (NaN/inf, float16, mixed widths, a newer format,
    metadata of any JSON type): the success path is exercised too."""
    _count("vector files (near-valid)")
    _write_and_check(tmp_path_factory, arrays, header)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["truncate", "flip", "insert", "length"]), st.integers(0, 10**6),
                          st.binary(min_size=1, max_size=8)), min_size=1, max_size=3))
def test_damaged_vector_bytes_load_or_give_one_line(tmp_path_factory, damage):
    _count("vector files (byte damage)")
    folder = tmp_path_factory.mktemp("b")
    path = ConceptVector("joy", {1: np.arange(1, 9, dtype=np.float32), 3: np.ones(8, dtype=np.float32)},
                         {"model": "m", "layer_norms": {1: 2.0}}).save(folder / "joy")
    raw = bytearray(path.read_bytes())
    for op, at, blob in damage:
        i = at % max(len(raw), 1)
        if op == "truncate":
            raw = raw[:i]
        elif op == "flip":
            raw[i:i + len(blob)] = blob
        elif op == "insert":
            raw[i:i] = blob
        else:  # the 8-byte header length
            raw[:8] = (at * 7919 + len(blob)).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    _check_vector_file(path)


# -- CLI argument lists: any flags of any command, hostile files as values -------------------------

CLI_COMMANDS = ["steer", "probe", "extract", "introspect", "patch", "heads", "align", "elicit", "run", "demo", "audit",
                "report", "datasets", "models"]
CLI_BASES = {"steer": ["--model", "m", "--emotion", "anger"], "probe": ["--model", "m", "--dataset", "emotions-basic"],
             "extract": ["--model", "m", "--dataset", "emotions-basic"], "introspect": ["--model", "m"],
             "patch": ["--model", "m", "--source", "emotions-basic:anger"],
             "heads": ["screen", "--model", "m", "--emotion", "anger"], "run": ["demo"], "demo": [], "audit": ["."],
             "report": ["."], "datasets": ["show", "emotions-basic"], "models": [],
             "align": ["--models", "m", "n", "--dataset", "emotions-basic"], "elicit": ["--model", "m"]}
_NOT_FUZZED = {"--executor", "--ray-address", "--workers", "--gpus-per-worker"}  # (these start Ray: tested elsewhere)


@functools.cache
def _flags_by_command() -> dict[str, list[str]]:
    from emoscope.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    out: dict[str, list[str]] = {}

    def collect(p) -> list[str]:
        p._populate()
        flags = [f for a in p._actions for f in a.option_strings if f.startswith("--") and f not in _NOT_FUZZED]
        for a in p._actions:
            if a.__class__.__name__ == "_SubParsersAction":
                for name, child in a.choices.items():
                    flags += [name, *collect(child)]
        return sorted(set(flags))

    for name in CLI_COMMANDS:
        out[name] = collect(sub.choices[name])
    return out


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    """A pool of files a user might pass by mistake: damaged vectors, garbage datasets, bad specs."""
    folder = tmp_path_factory.mktemp("pool")
    good = ConceptVector("anger", {1: np.ones(8, np.float32)}, {"model": "other-model"}).save(folder / "foreign")
    (folder / "trunc.safetensors").write_bytes(good.read_bytes()[:30])
    (folder / "garbage.jsonl").write_bytes(b"\xff\xfe{not json")
    (folder / "empty.csv").write_text("")
    (folder / "nolabel.csv").write_text("text\nhello\n")
    (folder / "ok.jsonl").write_text('{"text": "I am glad.", "label": "joy"}\n{"text": "Bus.", "label": "neutral"}\n')
    (folder / "bomb.yaml").write_text(alias_bomb())
    (folder / "tag.yaml").write_text("name: t\nmodel: !!python/name:os.system\nstages: [extract]\n")
    (folder / "binary.yaml").write_bytes(bytes(range(256)))
    (folder / "a_dir").mkdir()
    return [str(p) for p in sorted(folder.iterdir())] + [str(folder / "missing.safetensors")]


cli_values = st.one_of(st.text(max_size=12), any_char_text.filter(lambda t: "\x00" not in t),
                       st.sampled_from(["-1", "0", "1", "2", "nan", "inf", "-inf", "1e309", "--", "-", "all", "x,y",
                                        "0.5", "-2,0,2", "top:3", "1.0,2.3", "last", "mean_from:1", "token:-1",
                                        "emotions-basic", "emotions-basic:anger", "smollm2-135m", "demo", "screen",
                                        "show", "-h", "--help"]))


@settings(max_examples=150 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_any_argv_exits_0_or_2_with_one_line_and_no_partial_file(tmp_path_factory, monkeypatch, capsys,
                                                                 hostile_files, data):
    """Any mix of a command's flags with hostile values (damaged vectors, garbage datasets, alias
    bombs, random text): ``main`` returns 0 (1 for ``audit``'s verdict) or 2, a failure is one line
    with no traceback, and ``--out`` holds no partial file (nothing at all unless the run got as
    far as loading the model, where a stub stops it)."""
    import emoscope.models

    _count("CLI argument lists (any command)")
    work = tmp_path_factory.mktemp("argv")
    monkeypatch.chdir(work)  # a stray relative path lands here
    monkeypatch.setenv("EMOSCOPE_CACHE", str(work / "cache"))

    def no_model(*a, **k):
        raise EmoscopeError("MODEL LOAD REACHED")

    monkeypatch.setattr(emoscope.models, "load_model", no_model)
    command = data.draw(st.sampled_from(CLI_COMMANDS))
    values = st.one_of(cli_values, st.sampled_from(hostile_files))
    flags = st.sampled_from(_flags_by_command()[command])
    if data.draw(st.booleans()):  # any tokens in any order
        tokens = data.draw(st.lists(st.one_of(flags, values), max_size=8))
    else:  # a valid command line with a few flags set to hostile values, so checks past parsing run too
        tokens = list(CLI_BASES[command]) + [x for pair in data.draw(st.lists(st.tuples(flags, values), max_size=3))
                                             for x in pair]
    out = work / "out"
    argv = ["-q", command, *tokens]
    if data.draw(st.booleans()):
        argv += ["--model", data.draw(st.sampled_from(["m", "smollm2-135m", *hostile_files]))]
    if data.draw(st.integers(0, 9)) > 0:
        argv += ["--out", str(out)]
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # pragma: no cover - the failure this test exists for
        raise AssertionError(f"SystemExit escaped main: {argv}") from e
    err = capsys.readouterr().err.strip()
    _outcome(f"argv exit {rc}" + (" at the model stub" if "MODEL LOAD REACHED" in err else ""))
    assert rc in ((0, 1, 2) if command == "audit" else (0, 2)), (argv, rc, err)
    assert "Traceback" not in err, (argv, err)
    if rc == 2:
        lines = [ln for ln in err.splitlines() if not ln.startswith("emoscope: warning:")]
        assert len(lines) == 1, (argv, err)
        if "MODEL LOAD REACHED" not in err and out.exists() and not any(t == "--resume" for t in tokens):
            raise AssertionError(f"refused before the model loaded, yet {out} was written: {argv}")
    leftovers = [p for p in work.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".partial")]
    assert not leftovers, (argv, leftovers)
    for p in out.rglob("*.json") if out.exists() else []:
        json.loads(p.read_text())
