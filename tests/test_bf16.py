"""bfloat16 as a real option: every command runs with ``--dtype bfloat16`` on a tiny model,
the model it loads is bf16, and its numbers stay close to the float32 ones where an independent
float32 computation exists (extraction). Unit ids of bf16 edits hash (``core.executor``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from emoscope.cli.main import main
from emoscope.core.executor import unit_id
from emoscope.vectors import ConceptVector
from tests.helpers import intro_model

CHEAP = "nrc,vader,perplexity,repetition,script"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny chat llama (a tokenizer with yes/no tokens, for introspection) saved as a directory."""
    d = tmp_path_factory.mktemp("tiny-bf16")
    m = intro_model("llama", chat=True)
    m.hf.save_pretrained(d, safe_serialization=True)
    m.tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def loads(monkeypatch, tmp_path):
    """The real loader, recording the dtype of every model a command loads."""
    import emoscope.models as models

    seen: list[torch.dtype] = []
    real = models.load_model

    def loader(*a, **k):
        m = real(*a, **k)
        seen.append(m.dtype)
        return m

    monkeypatch.setattr(models, "load_model", loader)
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    return seen


def _vector(tmp_path, d: int = 32):
    rng = np.random.default_rng(3)
    return ConceptVector("anger", {x: rng.standard_normal(d).astype(np.float32) for x in (1, 2)}, {}).save(
        tmp_path / "anger")


def _texts(tmp_path, n: int = 12, labels=("anger", "neutral")):
    from emoscope.datasets import load_dataset

    ds = load_dataset("emotions-12" if len(labels) > 2 else "emotions-basic")
    rows = [{"text": t, "label": y} for lab in labels for t, y in
            [(t, y) for t, y in zip(ds.texts, ds.labels, strict=True) if y == lab][:n]]
    path = tmp_path / f"texts-{len(labels)}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(capsys, *argv):
    rc = main(["-q", *argv, "--dtype", "bfloat16"])
    err = capsys.readouterr().err
    assert rc == 0, err
    return rc


def test_unit_id_hashes_bf16_tensors_by_their_bits():
    a = torch.arange(6, dtype=torch.float32).to(torch.bfloat16)
    b = a.clone()
    b[3] = 3.015625  # the next bf16 after 3.0 (7 mantissa bits): one bit apart
    assert float(b[3]) != 3.0
    assert unit_id({"x": a}) == unit_id({"x": a.clone()})
    assert unit_id({"x": a}) != unit_id({"x": b})
    # same values, other dtype: another unit (float16 shares bf16's width but not its bits)
    assert unit_id({"x": a}) != unit_id({"x": a.to(torch.float16)})
    assert unit_id({"x": a.float()}) == unit_id({"x": a.float().numpy()})  # float32 ids unchanged


def test_extract_bf16_close_to_float32(tiny_dir, loads, tmp_path, capsys):
    from emoscope.activations import Activations

    texts = _texts(tmp_path, 6)
    for dt in ("bfloat16", "float32"):
        rc = main(["-q", "extract", "--model", str(tiny_dir), "--texts", str(texts), "--layers", "all",
                   "--position", "mean", "--dtype", dt, "--out", str(tmp_path / dt)])
        assert rc == 0, capsys.readouterr().err
    assert loads == [torch.bfloat16, torch.float32]
    bf, fp = (Activations.load(tmp_path / dt / "activations") for dt in ("bfloat16", "float32"))
    for layer in range(3):
        x, y = bf.get(layer), fp.get(layer)
        assert np.isfinite(x).all()
        # bf16 keeps 8 bits of mantissa: a relative error of a few 1e-3 per op, a few 1e-2 after 3 blocks
        assert np.linalg.norm(x - y) / np.linalg.norm(y) < 0.05
        assert np.linalg.norm(x - y) > 0  # it really ran in bf16


def test_probe_bf16(tiny_dir, loads, tmp_path, capsys):
    _run(capsys, "probe", "--model", str(tiny_dir), "--dataset", str(_texts(tmp_path)), "--folds", "3", "--seeds", "0",
         "--n-permutations", "5", "--out", str(tmp_path / "run"))
    assert loads == [torch.bfloat16]
    layers = pd.read_csv(next((tmp_path / "run" / "tables").glob("*layers*.csv")))
    assert len(layers) and np.isfinite(layers.select_dtypes("number").to_numpy(float)).any()


def test_steer_bf16_scores_every_row(tiny_dir, loads, tmp_path, capsys):
    _run(capsys, "steer", "--model", str(tiny_dir), "--vector", str(_vector(tmp_path)), "--layers", "1",
         "--strengths", "-1,0,1", "--n-prompts", "3", "--n-random", "2", "--max-new-tokens", "4",
         "--scorers", CHEAP, "--out", str(tmp_path / "run"))
    assert loads == [torch.bfloat16]
    out = pd.read_csv(tmp_path / "run" / "tables" / "steer_outputs.csv")
    # 3 prompts x (baseline + 1 layer x 2 strengths x (vector + 2 isotropic + 2 covariance))
    assert len(out) == 3 * (1 + 2 * 5)
    assert np.isfinite(out["perplexity"]).all() and (out["perplexity"] > 1).all()


def test_introspect_bf16(tiny_dir, loads, tmp_path, capsys):
    _run(capsys, "introspect", "--model", str(tiny_dir), "--concepts", "apple,river,music,fire,bread,stone",
         "--layers", "1,2", "--strengths", "1,4", "--n-random", "2", "--n-splits", "3", "--n-boot", "200",
         "--free-text", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "run"))
    assert loads == [torch.bfloat16]
    cells = pd.read_csv(tmp_path / "run" / "tables" / "introspect_cells.csv")
    assert np.isfinite(cells["logit_diff"]).all()


def test_patch_bf16(tiny_dir, loads, tmp_path, capsys):
    _run(capsys, "patch", "--model", str(tiny_dir), "--source", "emotions-basic:anger", "--prompts", "neutral-starts",
         "--n-prompts", "3", "--layers", "1", "--max-new-tokens", "4", "--n-random", "2", "--scorers", CHEAP,
         "--out", str(tmp_path / "run"))
    assert loads == [torch.bfloat16]
    out = pd.read_csv(next((tmp_path / "run" / "tables").glob("patch_outputs.csv")))
    assert len(out) and np.isfinite(out["perplexity"]).all()


def test_heads_bf16_screen_then_ablate(tiny_dir, loads, tmp_path, capsys):
    vec = _vector(tmp_path)
    _run(capsys, "heads", "screen", "--model", str(tiny_dir), "--vector", str(vec), "--dataset", str(_texts(tmp_path)),
         "--n-permutations", "19", "--out", str(tmp_path / "h1"))
    _run(capsys, "heads", "ablate", "--model", str(tiny_dir), "--heads", "top:2", "--from", str(tmp_path / "h1"),
         "--methods", "zero", "--max-new-tokens", "4", "--n-prompts", "3", "--n-random", "2", "--scorers", CHEAP,
         "--out", str(tmp_path / "h2"))
    assert loads == [torch.bfloat16, torch.bfloat16]
    screen = pd.read_csv(tmp_path / "h1" / "tables" / "heads_screen.csv")
    assert np.isfinite(screen["diff"]).all()
    out = pd.read_csv(tmp_path / "h2" / "tables" / "heads_ablate_outputs.csv")
    assert np.isfinite(out["proj_gen"]).all()


def test_elicit_bf16(tiny_dir, loads, tmp_path, capsys):
    _run(capsys, "elicit", "--model", str(tiny_dir), "--emotions", "joy,fear", "--n", "2", "--max-new-tokens", "5",
         "--out", str(tmp_path / "el"))
    assert loads == [torch.bfloat16]
    assert (tmp_path / "el" / "elicit" / "elicited.jsonl").exists()


def test_align_bf16(tiny_dir, loads, tmp_path, capsys):
    from tests.conftest import tiny_model

    other = tmp_path / "gpt2"
    m = tiny_model("gpt2")
    m.hf.save_pretrained(other, safe_serialization=True)
    m.tokenizer.save_pretrained(other)
    _run(capsys, "align", "--models", str(tiny_dir), str(other), "--dataset",
         str(_texts(tmp_path, 8, ("joy", "sadness", "anger", "fear", "neutral"))), "--neutral",
         str(_texts(tmp_path, 20, ("neutral",))), "--sweep-depths", "0.5", "--out", str(tmp_path / "run"))
    assert loads == [torch.bfloat16, torch.bfloat16]


def test_run_spec_bf16(tiny_dir, loads, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: bf16\nmodel: {tiny_dir}\ndataset: {_texts(tmp_path)}\nseed: 0\nmodel_dtype: bfloat16\n"
        "stages: [extract, vectors, steer]\n"
        "extract: {layers: all, position: mean}\n"
        "steer: {emotion: anger, layers: [1], strengths: [-1, 1], n_prompts: 3, n_random: 2, max_new_tokens: 4,"
        " scorers: [nrc, perplexity, repetition]}\n")
    rc = main(["-q", "run", str(spec), "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    assert loads == [torch.bfloat16]
    out = pd.read_csv(tmp_path / "run" / "tables" / "steer_outputs.csv")
    assert np.isfinite(out["perplexity"]).all()
