"""Bad input is refused before work starts: one line, exit code 2, no run directory.

The seven cases a new user ran into (each used to leave a run directory behind, most after
loading the model), then a property: any argv a command's parser accepts either runs to the end
or fails before ``--out`` is created, on a tiny model saved as a local directory (whose depth
and context are read from its ``config.json``, as for any local model). The one exception is
named: a ``token:I`` / ``mean_from:K`` position that passes the byte bound but is still longer
than a text once tokenised needs the tokenizer, so it fails in the stage, naming the text.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emoscope.cli.main import main
from tests.conftest import tiny_model

SCALE = max(1, int(os.environ.get("EMOSCOPE_FUZZ_SCALE", "1")))


@pytest.fixture
def loader_must_not_run(monkeypatch):
    """A model load fails the test; the loader's name check (``load_model.check``) stays the real one."""
    import emoscope.models
    from emoscope.models.loading import check_model_spec

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    boom.check = check_model_spec
    monkeypatch.setattr(emoscope.models, "load_model", boom)


def _cache(tmp_path, kind: str) -> str:
    if kind == "file":
        path = tmp_path / "cache-file"
        path.write_text("not a directory")
        return str(path)
    if kind == "dangling":
        path = tmp_path / "cache-link"
        path.symlink_to(tmp_path / "nowhere")
        return str(path)
    return str(tmp_path / "cache")


SEVEN = [
    (["extract", "--model", "no-such-model-xyz", "--dataset", "emotions-basic"], "ok",
     "emoscope: error: unknown model 'no-such-model-xyz': not an embedded alias"),
    (["extract", "--model", "smollm2-135m", "--dataset", "emotions-basic", "--layers", "99"], "ok",
     "emoscope: error: extract layers: layer 99 is out of range for smollm2-135m (valid: 0..29)"),
    (["extract", "--model", "smollm2-135m", "--dataset", "emotions-basic", "--layers", "1-"], "ok",
     "emoscope extract: error: argument --layers: cannot read layer '1-'"),
    (["extract", "--model", "smollm2-135m", "--dataset", "emotions-basic", "--layers", "-99"], "ok",
     "emoscope: error: extract layers: layer -99 is out of range for smollm2-135m (valid: 0..29)"),
    (["extract", "--model", "smollm2-135m", "--dataset", "emotions-basic", "--position", "token:500"], "ok",
     "emoscope: error: extract position token:500 needs 501 tokens in every text, but text 0 of emotions-basic"),
    (["steer", "--model", "smollm2-135m", "--emotion", "anger", "--strengths", "nan"], "ok",
     "emoscope steer: error: argument --strengths: must be finite numbers, got nan"),
    (["extract", "--model", "smollm2-135m", "--dataset", "emotions-basic"], "file",
     "is a file, not a directory; point EMOSCOPE_CACHE at a directory"),
    (["extract", "--model", "smollm2-135m", "--dataset", "emotions-basic"], "dangling",
     "which does not exist; point EMOSCOPE_CACHE at a directory"),
]


@pytest.mark.parametrize("argv, cache, needle", SEVEN, ids=[
    "unknown-model", "layer-99", "layer-1-", "layer--99", "token-500", "strength-nan", "cache-file", "cache-dangling"])
def test_the_seven_hostile_cases_are_one_line_exit_2_and_no_run_dir(tmp_path, monkeypatch, capsys,
                                                                     loader_must_not_run, argv, cache, needle):
    monkeypatch.setenv("EMOSCOPE_CACHE", _cache(tmp_path, cache))
    out = tmp_path / "run"
    rc = main(["-q", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert "--resume" not in err and "Traceback" not in err
    assert not out.exists()


def test_a_position_past_the_context_is_refused_before_the_texts_are_read(tmp_path, capsys, loader_must_not_run):
    out = tmp_path / "run"
    rc = main(["-q", "extract", "--model", "smollm2-135m", "--dataset", "emotions-basic", "--position", "token:9000",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "beyond the context of smollm2-135m (8192 tokens)" in err and not out.exists(), err


def test_auto_strengths_where_no_pilot_exists_is_refused_naming_where_it_is(tmp_path, capsys, loader_must_not_run):
    """``--strengths`` is one shared flag; ``auto`` means a pilot of generated text, which introspection
    (one answer's logits) has not: refused before anything loads, saying where ``auto`` works."""
    out = tmp_path / "run"
    rc = main(["-q", "introspect", "--model", "smollm2-135m", "--strengths", "auto", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and not out.exists(), err
    assert "introspect.strengths" in err and "'auto' is for steer and leakage" in err, err


def test_a_text_too_short_once_tokenised_fails_naming_the_text(tiny_dir, tmp_path, capsys, monkeypatch):
    """The byte bound lets ``token:6`` through for a 5-byte text; the tokenizer makes it shorter: the
    stage fails, names the text and the fix, and does not suggest resuming as is."""
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "t.txt"
    texts.write_text("Thank you so much for the lovely gift.\nRain.\n")
    out = tmp_path / "run"
    rc = main(["-q", "extract", "--model", str(tiny_dir), "--texts", str(texts), "--position", "token:6",
               "--no-cache", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "needs at least 7 tokens, but text 1 ('Rain.') has" in err and "use a smaller index" in err, err
    assert "the input must change" in err and "continue with --resume" not in err


@pytest.mark.parametrize("sections, models, needle", [
    ({"introspect": {"strengths": [1.0, float("inf")]}}, [], "introspect strengths: inf is not a finite number"),
    ({"steer": {"alpha": 0.0}}, [], "steer alpha: the level of a test must lie between 0 and 1, got 0"),
    ({"steer": {"max_new_tokens": 9000}}, [], "do not fit in the context of smollm2-135m (8192 tokens"),
    ({"steer": {"layers": [0.5, 31]}}, [], "steer layers: layer 31 is out of range for smollm2-135m"),
    ({"heads": {"vector_layers": "1-", "emotion": "anger"}}, [], "heads vector_layers: cannot read layer '1-'"),
    ({"extract": {"layers": [20]}}, ["gemma3-270m"], "extract layers: layer 20 is out of range for gemma3-270m"),
    ({"extract": {"position": "mean_from:400"}}, [], "needs 401 tokens in every text, but text 0 of emotions-basic"),
    ({"steer": {"position": "all"}}, [], "steer position all reads every token, but this needs one vector per text"),
    ({"extract": {"position": "all"}, "probe": {}}, [], "extract position all reads every token"),
])
def test_a_spec_gets_the_same_checks_as_the_command_line(tmp_path, sections, models, needle):
    """``emoscope run SPEC`` is checked like a command: by option name, against every model's known shape."""
    from emoscope.errors import EmoscopeError
    from emoscope.runs import parse_spec, run_spec

    spec = parse_spec({"name": "t", "model": "smollm2-135m", "models": models, "dataset": "emotions-basic",
                       "stages": list(sections), **sections})
    with pytest.raises(EmoscopeError) as err:
        run_spec(spec, tmp_path / "run", model_loader=lambda name: pytest.fail("a model was loaded"))
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_nan_observation_survives_the_ledger():
    """Found by the property below (a steer run with one prompt has no report half): JSON stores a
    NaN value as null, and the ledger must read it back as NaN, not crash."""
    import math

    from emoscope.audit import Finding, Observation

    f = Finding(kind="steering", observation=Observation(metric="m", value=math.nan, interval=(math.nan, math.nan)))
    back = Finding.model_validate_json(f.model_dump_json(), context={"stored": True})
    assert math.isnan(back.observation.value) and all(math.isnan(x) for x in back.observation.interval)


# -- the property -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny llama (3 layers, context 256) saved as a local safetensors directory."""
    d = tmp_path_factory.mktemp("tiny-llama-hostile")
    m = tiny_model("llama")
    m.hf.save_pretrained(d, safe_serialization=True)
    m.tokenizer.save_pretrained(d)
    return d


LAYERS = ["0", "2", "3", "-1", "-3", "-4", "0.5", "1.5", "0-2", "2-0", "1-", "all", "x", "0,0", "0-99999999"]
POSITIONS = ["last", "mean", "all", "token:0", "token:-1", "token:2", "token:40", "token:300", "token:-300",
             "mean_from:1", "mean_from:60", "mean_from:-1", "middle", ""]
FLAGS = {
    "extract": {"--layers": LAYERS, "--position": POSITIONS, "--batch-size": ["1", "2", "0", "-1"],
                "--store-dtype": ["float16", "float32", "int8"], "--padding-side": ["left", "right", "up"],
                "--dtype": ["float32", "bfloat16", "float7"], "--seed": ["0", "7", "x"]},
    "steer": {"--layers": LAYERS, "--position": POSITIONS, "--strengths": ["-1,1", "0", "2", "nan", "1e309", "1,x"],
              "--positions": ["all", "prompt", "generated", "from:1", "from:-1", "last", "window:2"],
              "--n-prompts": ["1", "2", "0"], "--max-new-tokens": ["1", "3", "0"], "--n-random": ["0", "1", "2", "-1"],
              "--unit": ["token_norm", "token_norm_robust", "raw", "trial_norm"],
              "--temperature": ["0", "0.7", "-1", "nan"], "--top-p": ["1", "0.5", "0", "2"], "--top-k": ["0", "3", "-1"],
              "--seeds": ["0", "0,1", "x"], "--random-kind": ["isotropic", "covariance", "both"],
              "--random-test": ["interval", "rank"], "--alpha": ["0.05", "0", "1.5", "nan"],
              "--batch-rows": ["1", "64", "0"], "--mode": ["add", "ablate_add"], "--baseline": ["neutral", "all", "joy"]},
}
BASE = {
    "extract": ["--texts", "{texts}", "--no-cache"],
    "steer": ["--emotion", "anger", "--dataset", "{data}", "--prompts", "{texts}", "--n-prompts", "2",
              "--max-new-tokens", "2", "--n-random", "1", "--strengths", "-1,1", "--layers", "1",
              "--scorers", "vader,repetition", "--score", "valence"],
}
TEXTS = "Thank you so much for the lovely gift.\nThe bus is late again.\nRain is expected tomorrow.\n"
DATA = "".join(f'{{"text": "{t}", "label": "{y}"}}\n' for t, y in [
    ("I am furious about the broken promise.", "anger"), ("How dare they cancel again!", "anger"),
    ("This is outrageous and unfair.", "anger"), ("The meeting is at three.", "neutral"),
    ("The shop opens at nine.", "neutral"), ("It rained in the north.", "neutral")])


@settings(max_examples=16 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_accepted_argv_runs_or_fails_before_creating_out(tiny_dir, tmp_path_factory, monkeypatch, capsys, data):
    work = tmp_path_factory.mktemp("argv")
    monkeypatch.setenv("EMOSCOPE_CACHE", str(work / "cache"))
    (work / "t.txt").write_text(TEXTS)
    (work / "d.jsonl").write_text(DATA)
    command = data.draw(st.sampled_from(sorted(FLAGS)))
    pool = FLAGS[command]
    chosen = data.draw(st.lists(st.sampled_from(sorted(pool)), max_size=3, unique=True))
    argv = [a.format(texts=work / "t.txt", data=work / "d.jsonl") for a in BASE[command]]
    for flag in chosen:
        argv += [flag, data.draw(st.sampled_from(pool[flag]))]
    out = work / "out"
    capsys.readouterr()
    rc = main(["-q", command, "--model", str(tiny_dir), *argv, "--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln and not ln.startswith("emoscope: warning:")]
    if rc == 0:
        assert (out / "report.html").is_file(), (argv, err)
        return
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (argv, err)
    if out.exists():  # only the one error that needs the tokenizer may come after the run started
        line = lines[0]
        assert ("needs at least" in line or "needs more than" in line) and "but text" in line, (argv, err)
        assert "the input must change" in line, (argv, err)
