"""Concept injection, part two: per-head attention in the replication's three conditions, flip
strengths, and a direction ablated in the same cells. Pure functions on planted curves; the rest
on the tiny 3-layer model of ``tests.helpers.intro_model``, checked against raw forwards with plain hooks
(``output_attentions``, hidden states captured by a forward hook)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emoscope.errors import InputError
from emoscope.introspection.cells import Injection, score_cells
from emoscope.introspection.concepts import random_vectors
from emoscope.introspection.tables import flip_lens_strengths, flip_strength, flips_table
from emoscope.models.standard import block_output
from emoscope.vectors import ConceptVector
from tests.helpers import QUESTIONS, intro_model, intro_setup


# -- flip strengths: pure functions on planted curves ------------------------------------------------
def test_flip_strength_interpolates_the_crossing():
    s = [0.0, 1.0, 2.0, 4.0, 8.0]
    assert flip_strength(s, [-3.0, -2.0, -1.0, 1.0, 5.0]) == pytest.approx(3.0)   # -1 at 2, +1 at 4
    assert flip_strength(s, [-3.0 + 0.5 * x for x in s]) == pytest.approx(6.0)      # a line: its root
    assert flip_strength(s[::-1], [5.0, 1.0, -1.0, -2.0, -3.0]) == pytest.approx(3.0)  # order does not matter
    assert flip_strength(s, [1.0, 2.0, 3.0, 4.0, 5.0]) == 0.0                       # already "yes"
    assert flip_strength(s, [-1.0, -1.0, 0.0, -1.0, -2.0]) == np.inf                # 0 is not a flip
    assert flip_strength(s, [-3.0, -2.0, -1.0, -0.5, -0.1]) == np.inf               # never flips
    assert np.isnan(flip_strength(s, [np.nan] * 5))                                # nothing to read
    assert flip_strength(s, [-3.0, np.nan, -1.0, 1.0, 5.0]) == pytest.approx(3.0)   # NaN points dropped
    assert flip_strength(s, [-2.0, 2.0, -1.0, -1.0, -1.0]) == pytest.approx(0.5)    # the first crossing
    assert flip_strength(s, [1.0, -1.0, 1.0, 3.0, 3.0]) == pytest.approx(1.5)       # yes at 0, no, then yes
    assert flip_strength(s, [1.0, -1.0, -2.0, -3.0, -1.0]) == np.inf                # yes at 0, then never again


def _planted_cells(curves, strengths=(2.0, 4.0, 8.0), baseline=(-1.0, -2.0), n_controls=2):
    """A cell table: ``curves[name] = (detection(s), control(s))`` at layer 1, strengths ``strengths``;
    the control curve is split over ``n_controls`` questions around its mean; the baseline rows
    hold ``baseline`` = (detection, control mean) at strength 0."""
    rows = [{"condition": "baseline", "kind": "detection", "vector": "none", "layer": pd.NA, "strength": 0.0,
             "logit_diff": baseline[0]}]
    rows += [{"condition": "baseline", "kind": "control", "vector": "none", "layer": pd.NA, "strength": 0.0,
              "logit_diff": baseline[1] + (q - (n_controls - 1) / 2)} for q in range(n_controls)]
    for name, (det, ctl) in curves.items():
        for s in strengths:
            rows.append({"condition": "concept", "kind": "detection", "vector": name, "layer": 1, "strength": s,
                         "logit_diff": det(s)})
            rows += [{"condition": "concept", "kind": "control", "vector": name, "layer": 1, "strength": s,
                      "logit_diff": ctl(s) + (q - (n_controls - 1) / 2)} for q in range(n_controls)]
    df = pd.DataFrame(rows)
    df["layer"] = df.layer.astype("Int64")
    df["relative_depth"] = [None if pd.isna(x) else x / 3 for x in df.layer]
    return df


def test_flips_table_gap_sign_and_never_flipping_curves():
    curves = {
        "detects": (lambda s: s - 3.0, lambda s: s - 6.0),          # detection at 3, control at 6: gap +3
        "yes_bias": (lambda s: s - 3.0, lambda s: s - 3.0),         # both together: gap 0
        "control_first": (lambda s: s - 6.0, lambda s: s - 3.0),    # gap -3
        "never": (lambda s: -1.0 - s, lambda s: -2.0 - s),          # neither flips: inf, inf, gap NaN
        "only_detection": (lambda s: s - 5.0, lambda s: -5.0),      # control never: gap +inf
        "from_baseline": (lambda s: 1.0, lambda s: -1.0),           # baseline -1 at 0, +1 at 2: flip 1
    }
    f = flips_table(_planted_cells(curves)).set_index("vector")
    assert f.loc["detects"].detection_flip == pytest.approx(3.0) and f.loc["detects"].control_flip == pytest.approx(6.0)
    assert f.loc["detects"].gap == pytest.approx(3.0) and f.loc["detects"].gap > 0
    assert f.loc["yes_bias"].gap == pytest.approx(0.0)
    assert f.loc["control_first"].gap == pytest.approx(-3.0)
    assert f.loc["never"].detection_flip == np.inf and f.loc["never"].control_flip == np.inf
    assert np.isnan(f.loc["never"].gap)
    assert f.loc["only_detection"].detection_flip == pytest.approx(5.0) and f.loc["only_detection"].gap == np.inf
    # strength 0 is the baseline: detection -1 there, +1 at 2 -> crosses at 1
    assert f.loc["from_baseline"].detection_flip == pytest.approx(1.0)
    assert f.loc["from_baseline"].control_flip == np.inf
    assert set(f.condition) == {"concept"} and (f.layer == 1).all()


def test_flip_lens_strength_is_where_most_concepts_flip_detection_but_not_control():
    # at 4: two of three concepts have detection > 0 and control < 0; at 2 only one
    curves = {"a": (lambda s: s - 1.0, lambda s: -1.0), "b": (lambda s: s - 3.0, lambda s: -1.0),
              "c": (lambda s: s - 5.0, lambda s: s - 3.0)}
    assert flip_lens_strengths(_planted_cells(curves)) == {1: 4.0}
    # control flips with detection everywhere: no strength qualifies
    both = {k: (lambda s: s - 1.0, lambda s: s - 1.0) for k in "abc"}
    assert flip_lens_strengths(_planted_cells(both)) == {1: None}


# -- the sweep on the tiny model: heads, flips, lens --------------------------------------------------
def _vectors(model, layers, n=3, seed=11):
    return [ConceptVector(f"c{i}", {layer: v[layer] * 5.0 for layer in layers}, {"kind": "concrete"})
            for i, v in enumerate(random_vectors(model.d_model, layers, n, seed=seed))]


@pytest.fixture(scope="module")
def heads_sweep():
    from emoscope.introspection import run_sweep

    model = intro_model("llama", True)
    vecs = _vectors(model, [0, 1])
    res = run_sweep(model, vecs, controls=QUESTIONS[:2], layers=[0, 1], strengths=[2, 8], n_random=2,
                    random_kind="isotropic", focus_layer=0, focus_strength=8, n_boot=100, seed=3)
    return model, vecs, res


def _eager_window_attention(model, trial, layer=None, vec=None):
    """Attention from the last prompt token to the window, per (layer, head), from a raw forward
    with ``output_attentions`` and a plain hook that adds ``vec`` from the window start on."""
    handle = None
    if layer is not None:
        v = torch.as_tensor(vec, dtype=torch.float32)

        def hook(_m, _i, out):
            h = block_output(out).clone()
            h[:, trial.window_start:] += v
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handle = model.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            att = model.hf(torch.tensor([trial.ids]), output_attentions=True).attentions
    finally:
        if handle is not None:
            handle.remove()
    return np.stack([a[0, :, -1, trial.window_start:].sum(-1).numpy() for a in att])   # (L, H)


def test_heads_table_equals_raw_attention_in_the_three_conditions(heads_sweep):
    from emoscope.introspection import build_trials

    model, vecs, res = heads_sweep
    fl, fs = res.meta["focus_layer"], res.meta["focus_strength"]
    scale = float(res.cells[(res.cells.layer == fl) & (res.cells.strength == fs)].scale.iloc[0])
    trials = build_trials(model, QUESTIONS[:2])
    rand = random_vectors(model.d_model, [0, 1], 2, seed=3)   # what the sweep drew (isotropic, its seed)

    def unit(v):
        x = np.asarray(v[fl], dtype=np.float64)
        return (x / np.linalg.norm(x) * scale).astype(np.float32)

    model.hf.set_attn_implementation("eager")
    try:
        det_base = _eager_window_attention(model, trials[0])
        ctl_base = np.mean([_eager_window_attention(model, t) for t in trials[1:]], 0)
        det = np.stack([_eager_window_attention(model, trials[0], fl, unit(v)) for v in vecs])
        ctl = np.stack([np.mean([_eager_window_attention(model, t, fl, unit(v)) for t in trials[1:]], 0)
                        for v in vecs])
        rdet = np.stack([_eager_window_attention(model, trials[0], fl, unit(v)) for v in rand])
        rctl = np.stack([np.mean([_eager_window_attention(model, t, fl, unit(v)) for t in trials[1:]], 0)
                         for v in rand])
    finally:
        model.hf.set_attn_implementation("sdpa")
    h = res.heads
    L, H = model.n_layers, model.n_heads
    assert len(h) == L * H and (h.n_concepts == 3).all() and (h.n_random == 2).all()

    def col(name):
        return h.pivot(index="layer", columns="head", values=name).to_numpy()

    np.testing.assert_allclose(col("detection_baseline"), det_base, atol=1e-5)
    np.testing.assert_allclose(col("control_baseline"), ctl_base, atol=1e-5)
    np.testing.assert_allclose(col("detection_injected"), det.mean(0), atol=1e-5)
    np.testing.assert_allclose(col("detection_injected_sd"), det.std(0, ddof=1), atol=1e-5)
    np.testing.assert_allclose(col("control_injected"), ctl.mean(0), atol=1e-5)
    np.testing.assert_allclose(col("random_detection_injected"), rdet.mean(0), atol=1e-5)
    np.testing.assert_allclose(col("random_detection_injected_sd"), rdet.std(0, ddof=1), atol=1e-5)
    np.testing.assert_allclose(col("random_detection_injected_min"), rdet.min(0), atol=1e-5)
    np.testing.assert_allclose(col("random_control_injected_max"), rctl.max(0), atol=1e-5)
    np.testing.assert_allclose(col("detection_minus_control"), det.mean(0) - ctl.mean(0), atol=1e-5)
    # the injection at layer 0 moves the attention of the later layers (so the parity is not trivial)
    assert np.abs(col("detection_minus_baseline")[fl + 1:]).max() > 1e-3
    assert res.meta["heads_random"] == "random"


def test_flips_table_of_a_sweep_follows_its_cells(heads_sweep):
    _, _, res = heads_sweep
    cells, flips = res.cells, res.flips
    assert len(flips) == (3 + 2) * 2 and set(flips.condition) == {"concept", "random"}
    base = cells[cells.condition == "baseline"]
    for r in flips.itertuples():
        g = cells[(cells.vector == r.vector) & (cells.layer == r.layer)]
        det = [base[base.kind == "detection"].logit_diff.iloc[0]] + [
            g[(g.kind == "detection") & (g.strength == s)].logit_diff.iloc[0] for s in (2.0, 8.0)]
        ctl = [base[base.kind == "control"].logit_diff.mean()] + [
            g[(g.kind == "control") & (g.strength == s)].logit_diff.mean() for s in (2.0, 8.0)]
        assert flip_strength([0, 2, 8], det) == pytest.approx(r.detection_flip, nan_ok=True)
        assert flip_strength([0, 2, 8], ctl) == pytest.approx(r.control_flip, nan_ok=True)
    # the lens is drawn per swept layer, each at its chosen strength, and the meta says how it was chosen
    lens = res.lens
    assert sorted(lens.injected_layer.dropna().unique()) == [0, 1]
    for layer, s in res.meta["lens_strengths"].items():
        sub = lens[(lens.injected_layer == layer) & (lens.condition == "concept")]
        assert set(sub.strength) == {s} and set(sub.strength_choice) == {res.meta["lens_strength_choice"][layer]}
    assert "lens_note" in res.meta and len(res.meta["flips"]) == 2 * 2
    assert "introspect_flips" in res.tables()


# -- ablation ------------------------------------------------------------------------------------------
def _resid_at(model, trial, layer):
    """``resid[layer]`` of ``trial`` at every position, from a raw forward with a plain hook."""
    got = {}

    def hook(_m, _i, out):
        got["h"] = block_output(out)[0].clone()
    handle = model.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.hf(torch.tensor([trial.ids]))
    finally:
        handle.remove()
    return got["h"].numpy()


def _orthogonal(vectors, d, seed=0):
    """A unit direction orthogonal to every row of ``vectors`` (fewer than ``d`` of them)."""
    a = np.asarray(vectors, dtype=np.float64)
    _, _, vt = np.linalg.svd(a, full_matrices=True)
    null = vt[np.linalg.matrix_rank(a):]                         # orthonormal basis of the complement
    u = null.T @ np.random.default_rng(seed).standard_normal(null.shape[0])
    return (u / np.linalg.norm(u)).astype(np.float32)


@pytest.mark.parametrize("skip_early", [True, False])
def test_ablating_an_untouched_direction_changes_nothing(skip_early):
    model, trials, tokens, bank = intro_setup(n_vectors=1)
    t, layer = 1, 1
    assert len(trials[t].ids) - trials[t].window_start + 1 < model.d_model   # precondition: room for u
    h = _resid_at(model, trials[t], layer)[trials[t].window_start:]          # every window position
    u = _orthogonal(np.vstack([h, bank[0][None]]), model.d_model)
    cells = [Injection(t, layer, 0, 3.0), Injection(t, layer, 0, 3.0, True), Injection(t), Injection(t, layer, 0, 0.0, True)]
    got = score_cells(model, trials, cells, bank, tokens, ablate={layer: u}, skip_early=skip_early)
    moved = score_cells(model, trials, cells, bank, tokens, ablate={layer: bank[0]}, skip_early=skip_early)
    np.testing.assert_allclose(got.logit_diff[1], got.logit_diff[0], atol=1e-5)
    np.testing.assert_allclose(got.lens[1], got.lens[0], atol=1e-5)
    np.testing.assert_allclose(got.logit_diff[3], got.logit_diff[2], atol=1e-5)
    assert abs(moved.logit_diff[1] - moved.logit_diff[0]) > 1e-3   # the same cell with a touched direction moves


def test_ablating_the_injected_direction_removes_the_injection_at_that_layer():
    model, trials, tokens, bank = intro_setup(n_vectors=2)
    layer = 1
    u = bank[0] / np.linalg.norm(bank[0])
    cells = [Injection(0), Injection(0, layer, 0, 4.0), Injection(0, layer, 0, 0.0, True),
             Injection(0, layer, 0, 4.0, True), Injection(2, layer, 1, 4.0, True), Injection(2, layer, 1, 0.0, True)]
    fast = score_cells(model, trials, cells, bank, tokens, ablate={layer: bank[0]}, keep_resid=True)
    slow = score_cells(model, trials, cells, bank, tokens, ablate={layer: bank[0]}, keep_resid=True,
                       skip_early=False, share_prefix=False, batch_size=2)
    for got in (fast, slow):
        r = got.resid[:, layer]                                     # resid[layer] at the answer position
        # injected + ablated: nothing left along u; without ablation the injection is there
        assert abs(float(r[3] @ u)) < 1e-4 and abs(float(r[2] @ u)) < 1e-4
        assert float((r[1] - r[0]) @ u) > 1.0
        # its residual minus the (ablated) baseline's has ~0 projection on u, and is ~0 altogether:
        # the injection along u is gone at that layer and after it
        assert abs(float((r[3] - r[2]) @ u)) < 1e-4
        np.testing.assert_allclose(got.resid[3, layer:], got.resid[2, layer:], atol=1e-4)
        np.testing.assert_allclose(got.logit_diff[3], got.logit_diff[2], atol=1e-5)
        # a different vector: its component along u is removed, the rest stays
        assert abs(float(got.resid[4, layer] @ u)) < 1e-4
        assert np.abs(got.resid[4, layer] - got.resid[5, layer]).max() > 1e-2
    np.testing.assert_allclose(fast.logit_diff, slow.logit_diff, atol=1e-5)
    np.testing.assert_allclose(fast.lens, slow.lens, atol=1e-5)

    # an independent reference: a full forward with a plain hook that adds, then ablates, over the window
    def reference(c):
        trial = trials[c.trial]
        v = torch.as_tensor(c.scale * bank[c.vector] / 1.0)
        uu = torch.as_tensor(u)

        def hook(_m, _i, out):
            h = block_output(out).clone()
            w = h[:, trial.window_start:] + v
            h[:, trial.window_start:] = w - (w @ uu)[..., None] * uu
            return (h, *out[1:]) if isinstance(out, tuple) else h
        handle = model.blocks[c.layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model.hf(torch.tensor([trial.ids])).logits[0, -1]
        finally:
            handle.remove()
        from emoscope.introspection import yes_no_diff

        return float(yes_no_diff(logits, tokens))

    for i in (3, 4, 5):
        assert fast.logit_diff[i] == pytest.approx(reference(cells[i]), abs=1e-4)


def test_sweep_with_an_orthogonal_ablation_is_the_identity_and_reports_both():
    from emoscope.introspection import build_trials, run_sweep
    from emoscope.introspection.tables import ABLATED

    model = intro_model("llama", True)
    layers = [0, 1]
    vecs = _vectors(model, layers)
    trials = build_trials(model, QUESTIONS[:2], window="generation_only")   # one window token per prompt
    rand = random_vectors(model.d_model, layers, 1, seed=0)                  # the sweep's random vector (seed 0)
    dirs = {}
    for layer in layers:
        h = np.stack([_resid_at(model, t, layer)[-1] for t in trials])
        touched = [h] + [v[layer][None] for v in vecs + rand]
        dirs[layer] = _orthogonal(np.vstack(touched), model.d_model, seed=layer)
    ortho = ConceptVector("ortho", dirs)
    res = run_sweep(model, vecs, controls=QUESTIONS[:2], layers=layers, strengths=[2, 8], n_random=1,
                    random_kind="isotropic", window="generation_only", heads=False, n_boot=100, ablate=ortho)
    c = res.cells
    assert set(c.condition) == {"baseline", "baseline" + ABLATED, "concept", "concept" + ABLATED, "random",
                                "random" + ABLATED}
    plain = c[c.condition == "concept"].set_index(["vector", "question", "layer", "strength"]).logit_diff
    abl = c[c.condition == "concept" + ABLATED].set_index(["vector", "question", "layer", "strength"]).logit_diff
    np.testing.assert_allclose(abl.loc[plain.index].to_numpy(), plain.to_numpy(), atol=1e-5)
    b = c[c.condition == "baseline" + ABLATED]
    assert len(b) == len(layers) * len(trials) and np.abs(b["shift"]).max() < 1e-5
    a = res.ablation
    assert set(a.condition) == {"concept", "random"} and len(a) == 2 * 2 * 2
    assert np.abs(a.difference).max() < 1e-5 and (a[a.condition == "concept"].n == 3).all()
    ac = a[a.condition == "concept"]   # one random vector: no interval
    assert (ac.difference_lo <= ac.difference + 1e-12).all() and (ac.difference <= ac.difference_hi + 1e-12).all()
    assert a[a.condition == "random"].difference_lo.isna().all()
    assert res.meta["ablate"] == "ortho" and set(res.meta["ablation_baseline"]) == set(layers)
    assert {"introspect_ablation", "introspect_flips"} <= set(res.tables())
    # the held-out finding and the random comparison use the plain conditions only
    assert set(res.heldout.report) | set(res.heldout.select) == {v.name for v in vecs}


def test_ablation_shifts_are_measured_from_the_ablated_baseline():
    from emoscope.introspection import run_sweep

    model = intro_model("llama", True)
    vecs = _vectors(model, [1])
    own = ConceptVector("c0-direction", {1: vecs[0][1]})
    res = run_sweep(model, vecs, controls=QUESTIONS[:1], layers=[1], strengths=[4], n_random=0, heads=False,
                    n_boot=100, ablate=own)
    c = res.cells
    base = c[c.condition == "baseline+ablated"].set_index("question").logit_diff
    abl = c[c.condition == "concept+ablated"]
    np.testing.assert_allclose(abl["shift"], abl.logit_diff - base.loc[abl.question].to_numpy(), atol=1e-6)
    # c0 injected along the ablated direction: with ablation it does nothing
    c0 = abl[abl.vector == "c0"]
    assert np.abs(c0["shift"]).max() < 1e-4
    row = res.ablation.set_index("condition").loc["concept"]
    assert row.n == 3 and np.isfinite(row.difference)


def test_ablate_bad_input_is_one_line(tmp_path):
    from emoscope.introspection import run_sweep

    model = intro_model("llama", True)
    narrow = ConceptVector("narrow", {1: np.ones(model.d_model // 2)})
    with pytest.raises(InputError, match="width 16.*d_model=32") as e:
        run_sweep(model, concepts=["ocean"], baseline=["table"], controls=QUESTIONS[:1], layers=[1], strengths=[2],
                  n_random=0, heads=False, ablate=narrow)
    assert "\n" not in str(e.value)
    other = ConceptVector("elsewhere", {2: np.ones(model.d_model)})
    with pytest.raises(InputError, match="no layer 1") as e:
        run_sweep(model, concepts=["ocean"], baseline=["table"], controls=QUESTIONS[:1], layers=[1], strengths=[2],
                  n_random=0, heads=False, ablate=other)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="not found"):
        run_sweep(model, concepts=["ocean"], baseline=["table"], controls=QUESTIONS[:1], layers=[1], strengths=[2],
                  n_random=0, heads=False, ablate=str(tmp_path / "missing.safetensors"))
    with pytest.raises(InputError, match="ablated cell"):
        _m, trials, tokens, bank = intro_setup()
        score_cells(model, trials, [Injection(0, 1, 0, 1.0, True)], bank, tokens)


def test_cli_ablate_flag_runs_the_stage_and_rejects_a_missing_file(tmp_path, capsys):
    from emoscope.cli.cmd_introspect import build_spec
    from emoscope.cli.main import build_parser, main
    from emoscope.runs import run_spec

    model = intro_model("llama", True)
    path = ConceptVector("refusal", {1: np.random.default_rng(0).standard_normal(model.d_model),
                                     2: np.random.default_rng(1).standard_normal(model.d_model)}).save(
        tmp_path / "refusal.safetensors")
    args = build_parser().parse_args([
        "introspect", "--model", "tiny", "--concepts", "ocean,bread,dog", "--layers", "1,2", "--strengths", "1,4",
        "--n-random", "1", "--random-kind", "isotropic", "--no-heads", "--n-boot", "100", "--ablate", str(path),
        "--out", str(tmp_path / "run")])
    spec = build_spec(args)
    assert spec.options("introspect").ablate == str(path)
    rd = run_spec(spec, tmp_path / "run", model_loader=lambda name: model)
    for name in ("ablation", "flips", "summary"):
        assert (rd.root / "tables" / f"introspect_{name}.csv").exists()
    assert (rd.root / "figures" / "introspect_ablation.png").exists()
    abl = pd.read_csv(rd.root / "tables" / "introspect_ablation.csv")
    assert set(abl.condition) == {"concept", "random"} and len(abl) == 2 * 2 * 2

    rc = main(["introspect", "--model", "smollm2-135m", "--ablate", str(tmp_path / "missing.safetensors"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "missing.safetensors" in err
