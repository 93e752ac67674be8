"""Multi-model specs on tiny random models of three families (Llama, Gemma-3, Qwen2): per-model
stages run once per model (``probe@KEY``), their tables are kept apart (``KEY.probe_layers``),
activations are extracted once per (model, text set), the cross-model stage compares them, and
bad input (one model, a layer a model lacks, a rating table naming unknown emotions) is one
line before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from emoscope.errors import EmoscopeError, InputError
from emoscope.runs import run_spec
from emoscope.runs.runner import stage_keys
from emoscope.runs.spec import parse_spec
from tests.conftest import tiny_model

FAMILIES = ("llama", "gemma3_text", "qwen2")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    out = {}
    for fam in FAMILIES:
        d = tmp_path_factory.mktemp(f"tiny-{fam}")
        m = tiny_model(fam)
        m.hf.save_pretrained(d, safe_serialization=True)
        m.tokenizer.save_pretrained(d)
        out[fam] = d
    return out


EMOTIONS = ("joy", "sadness", "anger", "fear", "calm", "pride", "neutral")


def _small(name: str):
    """emotions-12 cut to 6 emotions + neutral, 12 texts each (a fast run on tiny models)."""
    from emoscope.datasets import Dataset, load_dataset

    ds = load_dataset(name)
    keep: dict[str, int] = {}
    rows = []
    for t, lab in zip(ds.texts, ds.labels, strict=True):
        if lab in EMOTIONS and keep.get(lab, 0) < 12:
            keep[lab] = keep.get(lab, 0) + 1
            rows.append((t, lab))
    return Dataset(name, [t for t, _ in rows], [lab for _, lab in rows])


def _spec(models, **over):
    data = {"name": "xm", "model": str(models[0]), "models": [str(m) for m in models[1:]],
            "dataset": "emotions-12", "seed": 0,
            "stages": ["extract", "vectors", "probe", "crossmodel"],
            "extract": {"layers": "all", "position": "last"},
            "probe": {"n_folds": 3, "seeds": [0], "n_permutations": 5, "nullspace_k": 1},
            "crossmodel": {"n_perm": 199, "sweep_depths": [0.34]}}
    data.update(over)
    return parse_spec(data, source="test")


def test_three_families_in_one_run(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    import emoscope.activations as act

    calls: list[tuple[str, int, bool]] = []
    real = act.extract

    def counting(model, texts, *a, **k):
        out = real(model, texts, *a, **k)
        calls.append((model.name, len(texts), bool(out.cache_hit)))
        return out

    monkeypatch.setattr(act, "extract", counting)  # what RunContext.activations calls
    models = [tiny_dirs[f] for f in FAMILIES]
    spec = _spec(models)
    keys = [d.name for d in models]
    assert stage_keys(spec) == [f"{s}@{k}" for s in ("extract", "vectors", "probe") for k in keys] + ["crossmodel"]
    rd = run_spec(spec, tmp_path / "run", log=lambda _m: None, dataset_loader=_small)
    m = rd.read_manifest()
    assert all(r.status == "done" for r in m.stages.values()) and len(m.stages) == 10
    # per-model outputs kept apart: tables prefixed, vectors under models/KEY/
    for k in keys:
        assert (rd.tables / f"{k}.probe_layers.csv").is_file()
        assert (rd.root / "models" / k / "vectors" / "anger.safetensors").is_file()
        assert (rd.figures / f"{k}.probe_layer_curve.png").is_file()
    assert not (rd.root / "vectors").exists()
    probe_ids = {f.id for f in rd.ledger.read() if f.kind == "probe"}
    assert probe_ids == {f"probe@{k}-000" for k in keys}
    # the cross-model tables: every pair, raw defined (equal widths, d=32)
    al = pd.read_csv(rd.tables / "alignment.csv")
    assert set(zip(al.source, al.target, strict=True)) == {(str(a), str(b)) for i, a in enumerate(models)
                                                           for b in models[i + 1:]}
    assert set(al["map"]) == {"raw", "ridge", "procrustes", "ridge_shuffled", "procrustes_shuffled"}
    assert al.loc[al["map"] == "raw", "defined"].all()
    es = pd.read_csv(rd.tables / "emotion_space.csv")
    assert set(es.vectors) == {"raw", "denoised"} and set(es.pc) == {"pc1", "pc2"}
    peaks = pd.read_csv(rd.tables / "depth_peaks.csv")
    assert len(peaks) == 3 and peaks.argmax_rel_depth.between(0, 1).all()
    cka = pd.read_csv(rd.tables / "cka.csv")
    same = cka[(cka.model_a == cka.model_b) & (cka.layer_a == cka.layer_b)]
    assert np.allclose(same.cka, 1.0)
    kinds = {f.kind for f in rd.ledger.read()}
    assert {"alignment", "emotion_space", "depth"} <= kinds
    # every tested finding records the p that decides its verdict; a description records none
    for f in rd.ledger.read():
        p = f.observation.p_value
        if f.kind == "depth":
            assert p is None
        elif f.kind == "emotion_space":
            assert p == pytest.approx(next(c for c in f.controls if c.name == "null_distribution").value, abs=5e-5)
        elif f.kind == "alignment":  # both tests decide: the intersection-union p is the larger
            m = f.observation.metric
            pair = al.source.map(lambda a_, m=m: f"of {a_}'s" in m) & al.target.map(lambda b_, m=m: f"among {b_}'s" in m)
            r = al[pair & (al["map"] == "ridge") & (al.vectors == "raw") & (al.depth == 0.5)].iloc[0]
            assert p == pytest.approx(max(r.id_p_centred, r.p_pairing))
            assert next(c for c in f.controls if c.name == "shuffled_pairing").passed is bool(r.p_pairing < 0.05)
        elif f.kind == "probe":
            key = f.id.split("@")[1].rsplit("-", 1)[0]
            t = pd.read_csv(rd.tables / f"{key}.probe_layers.csv")
            layer = int(f.observation.metric.split("layer ")[1].split(" ")[0])
            assert p == pytest.approx(float(t.loc[t.layer == layer, "perm_p_max"].iloc[0]))
    # activations: each (model, text set) extracted once; every later request is a cache hit
    fresh = [(n, t) for n, t, hit in calls if not hit]
    assert len(fresh) == len(set(fresh)) == 6  # 3 models x (the dataset, neutral-corpus)
    # an independent recomputation: the stored ridge row of one pair equals a direct call
    from emoscope.activations import extract
    from emoscope.datasets import load_texts
    from emoscope.geometry.crossmodel import fit_neutral_maps

    a, b = (tiny_model(f) for f in FAMILIES[:2])
    row = al[(al.source == str(models[0])) & (al.target == str(models[1])) & (al["map"] == "ridge")
             & (al.vectors == "raw") & (al.depth == 0.5)].iloc[0]
    texts = load_texts("neutral-corpus")
    XA = extract(a, texts, layers=[int(row.layer_a)], position="last", progress=False).get(int(row.layer_a))
    XB = extract(b, texts, layers=[int(row.layer_b)], position="last", progress=False).get(int(row.layer_b))
    assert fit_neutral_maps(XA, XB, seed=0).r2_heldout["ridge"] == pytest.approx(row.r2_heldout, abs=1e-6)
    assert (rd.root / "report.html").is_file()
    # resume keeps every finished per-model and cross-model stage
    again = run_spec(spec, tmp_path / "run", resume=True, log=lambda _m: None, dataset_loader=_small)
    assert {k: r.attempts for k, r in again.read_manifest().stages.items()} == {k: 1 for k in stage_keys(spec)}


def test_one_model_for_a_cross_model_stage_is_one_line(tiny_dirs, tmp_path):
    spec = _spec([tiny_dirs["llama"]], stages=["extract", "crossmodel"])
    with pytest.raises(InputError, match="compares models, but the spec names one"):
        run_spec(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_layer_one_model_lacks_is_one_line_before_loading(tmp_path):
    dirs = []
    for name, n in (("deep", 6), ("shallow", 3)):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"num_hidden_layers": n}))  # no weights: nothing may load
        dirs.append(d)
    spec = _spec(dirs, stages=["extract", "crossmodel"], extract={"layers": [1, 4]})
    with pytest.raises(InputError, match=r"extract.layers: layer 4 does not exist in .*shallow \(3 layers; .*deep has 6\)"):
        run_spec(spec, tmp_path / "run", model_loader=lambda n: pytest.fail("a model was loaded"))
    spec = _spec(dirs, stages=["extract", "crossmodel"], crossmodel={"depth": 5})
    with pytest.raises(InputError, match="crossmodel.depth: layer 5 does not exist"):
        run_spec(spec, tmp_path / "run2", model_loader=lambda n: pytest.fail("a model was loaded"))


def test_unknown_emotions_in_a_rating_table_name_the_rows(tiny_dirs, tmp_path):
    p = tmp_path / "va.csv"
    p.write_text("emotion,valence,arousal\n" + "".join(f"{e},0.5,0.5\n" for e in EMOTIONS[:-1]) + "apology,0.5,0.3\n")
    spec = _spec([tiny_dirs["llama"], tiny_dirs["qwen2"]], crossmodel={"valence_arousal": str(p)})
    with pytest.raises(InputError, match=r"row\(s\) 7 \(apology\) name emotions that have no vector"):
        run_spec(spec, tmp_path / "run", dataset_loader=_small)


def test_duplicate_model_labels_are_a_spec_error(tmp_path):
    with pytest.raises(EmoscopeError, match="share the label"):
        parse_spec({"name": "x", "model": "/a/m", "models": ["/b/m"], "stages": ["extract"]})


@pytest.mark.parametrize("args,needle", [
    (["--depth", "20"], "crossmodel.depth: layer 20 does not exist in gemma3-270m (18 layers; smollm2-135m has 30)"),
    (["--valence-arousal", "{tmp}/va.csv"], "missing column(s) arousal"),
    (["--depth", "half"], "must be a relative depth like 0.5"),
])
def test_align_cli_bad_input_is_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch, args, needle):
    import emoscope.models as models
    from emoscope.cli.main import main

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "va.csv").write_text("emotion,valence\njoy,0.9\n")
    argv = ["align", "--models", "smollm2-135m", "gemma3-270m", "--dataset", "emotions-12",
            "--out", str(tmp_path / "run"), *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
