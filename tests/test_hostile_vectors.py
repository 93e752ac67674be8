"""A vector whose metadata names another model is refused (one line, exit 2, before the model
loads) unless allowed (``--allow-other-model`` / ``allow_other_model: true``); width and layers
are checked even then. One check (``emoscope.vectors.checks``) for steer, introspect and heads."""

from __future__ import annotations

import numpy as np
import pytest

from emoscope.cli.main import main
from emoscope.errors import EmoscopeError, InputError
from emoscope.models.shape import canonical_model, same_model
from emoscope.vectors import ConceptVector
from emoscope.vectors.checks import check_vector_fits, load_vector_for

from .conftest import tiny_model

D = 32  # the tiny models' width


def _save(tmp_path, name="anger", d=D, layers=(1, 2), **meta):
    rng = np.random.default_rng(0)
    v = ConceptVector(name, {x: rng.standard_normal(d).astype(np.float32) for x in layers}, meta)
    return v.save(tmp_path / f"{name}-{'-'.join(f'{k}{v}'[:20] for k, v in meta.items()) or 'plain'}-{d}")


def test_same_model_spellings(tmp_path, monkeypatch):
    from emoscope.models.loading import _catalog

    alias, entry = next(iter(_catalog().items()))
    assert same_model(alias, entry["hf_id"]) and same_model(alias, entry["hf_id"].upper())
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert same_model("./m", str(tmp_path / "m")) and not same_model("./m", str(tmp_path))
    assert not same_model("gpt2", "org/gpt2") and not same_model(alias, "gpt2")
    assert canonical_model("x" * 5000) == "x" * 5000  # too long to be a path: still a name


def test_load_vector_for_refuses_another_model_unless_allowed(tmp_path):
    path = _save(tmp_path, model="other-model")
    with pytest.raises(InputError) as err:
        load_vector_for(path, "tiny", what="steer: vector")
    msg = str(err.value)
    assert "\n" not in msg and "fitted on other-model, not tiny" in msg and "--allow-other-model" in msg
    assert load_vector_for(path, "tiny", allow_other_model=True).layers == [1, 2]
    assert load_vector_for(_save(tmp_path), "tiny").name == "anger"  # no recorded model: taken as it is
    assert load_vector_for(_save(tmp_path, model="tiny"), "tiny").name == "anger"
    with pytest.raises(InputError, match="not found"):
        load_vector_for(tmp_path / "nope.safetensors", "tiny")


def test_shape_is_checked_even_when_another_model_is_allowed(tmp_path):
    from emoscope.models.loading import _catalog

    alias, entry = next(iter(_catalog().items()))
    wide = _save(tmp_path, d=int(entry["d_model"]) + 1, model="other-model")
    with pytest.raises(InputError, match=f"d_model={int(entry['d_model']) + 1} but {alias} has"):
        load_vector_for(wide, alias, allow_other_model=True)
    deep = _save(tmp_path, d=int(entry["d_model"]), layers=(int(entry["n_layers"]),))
    with pytest.raises(InputError, match="has layers"):
        load_vector_for(deep, alias)
    model = tiny_model("llama")
    v = ConceptVector.load(_save(tmp_path, model="tiny", weights_sha256="0" * 64))
    with pytest.raises(InputError, match="other weights"):
        check_vector_fits(v, model, where="steer: vector v")
    check_vector_fits(v, model, allow_other_model=True)
    with pytest.raises(InputError, match="d_model=7"):
        check_vector_fits(ConceptVector("x", {0: np.ones(7)}), model, allow_other_model=True)
    with pytest.raises(InputError, match=r"has layers \[9\]"):
        check_vector_fits(ConceptVector("x", {9: np.ones(D)}), model, allow_other_model=True)
    same = ConceptVector.load(_save(tmp_path, name="same", model="anything", weights_sha256=model.weights_sha256))
    check_vector_fits(same, model)  # same weights under another name: fine


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """``load_model`` raises a marker: a run that reaches it got past every pre-load check."""
    import emoscope.models

    def marker(*a, **k):
        raise EmoscopeError("MODEL LOAD REACHED")

    monkeypatch.setattr(emoscope.models, "load_model", marker)
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))


def _argv(command, path, out):
    if command == "steer":
        return ["-q", "steer", "--model", "tiny", "--vector", str(path), "--out", str(out)]
    if command == "introspect":
        return ["-q", "introspect", "--model", "tiny", "--ablate", str(path), "--out", str(out)]
    return ["-q", "heads", "screen", "--model", "tiny", "--vector", str(path), "--out", str(out)]


@pytest.mark.parametrize("command", ["steer", "introspect", "heads"])
def test_cli_refuses_a_foreign_vector_before_the_model_loads(no_model, tmp_path, capsys, command):
    path = _save(tmp_path, model="other-model")
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(_argv(command, path, out))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "fitted on other-model, not tiny" in err, err
    assert "MODEL LOAD REACHED" not in err and not out.exists()
    rc = main(_argv(command, path, out) + ["--allow-other-model"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "MODEL LOAD REACHED" in err, err  # past the check: the model would load now


def test_spec_option_allows_it_too(no_model, tmp_path, capsys):
    path = _save(tmp_path, model="other-model")
    spec = tmp_path / "s.yaml"
    for allow, reached in ((False, False), (True, True)):
        spec.write_text(f"name: s\nmodel: tiny\nstages: [steer]\nsteer: {{vector: '{path}', "
                        f"allow_other_model: {str(allow).lower()}}}\n")
        out = tmp_path / f"run-{allow}"
        assert main(["-q", "run", str(spec), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("MODEL LOAD REACHED" in err) == reached, err


def test_after_load_other_weights_are_refused_before_any_forward(monkeypatch, tmp_path, capsys):
    """The name matches but the weights hash does not: refused once the model is loaded, before
    the sweep's first forward (a hook on the embedding would see it)."""
    import emoscope.models

    model = tiny_model("llama")
    monkeypatch.setattr(emoscope.models, "load_model", lambda *a, **k: model)
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    calls = []
    handle = model.hf.get_input_embeddings().register_forward_hook(lambda *a: calls.append(1))
    try:
        path = _save(tmp_path, model="tiny", weights_sha256="0" * 64)
        rc = main(["-q", "steer", "--model", "tiny", "--vector", str(path), "--out", str(tmp_path / "o")])
    finally:
        handle.remove()
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "other weights" in err, err
    assert calls == []
