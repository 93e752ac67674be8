"""A user's own two-label data (no ``neutral`` class) runs through ``emoscope probe`` and
``emoscope steer``; input no stage can use is one line, exit 2, before any model loads."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from emoscope.cli.main import main
from emoscope.errors import InputError
from emoscope.runs import RunDir, parse_spec, run_spec
from emoscope.vectors import ConceptVector

PRAISE = ["Thank you so much for the lovely gift, it made my whole week.", "What a wonderful meal, thank you.",
          "You did a great job on the report.", "I really love how kind you were today.",
          "Thanks for helping me move, you are the best.", "Your talk was brilliant and clear.",
          "The garden looks beautiful, well done.", "I am so grateful for your patience.",
          "Such a thoughtful note, thank you!", "You handled that meeting perfectly.",
          "Lovely work on the new design.", "Thank you for the kind words yesterday.",
          "What a great idea, I love it.", "Your cake was absolutely delicious.",
          "Thanks so much for waiting for me."]
COMPLAINT = ["I cannot believe they cancelled the train again without any notice!", "The soup was cold and bland.",
             "My order arrived late and broken.", "The room was dirty and noisy all night.",
             "Nobody answered the phone for an hour.", "The bus is late again, this is ridiculous.",
             "They charged me twice for the same ticket.", "The printer jammed for the third time today.",
             "Why is the wifi always down?", "The queue took forever and the staff were rude.",
             "My package was left in the rain.", "The app crashed and deleted my notes.",
             "The heating has been broken for a week.", "They lost my luggage again.",
             "The meeting ran late and nothing was decided."]


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture
def two_labels(tmp_path):
    return write_csv(tmp_path / "reviews.csv", [(t, "praise") for t in PRAISE] + [(t, "complaint") for t in COMPLAINT])


def cli(capsys, *argv):
    rc = main(["--quiet", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_probe_on_two_labels_without_neutral(tiny_dir, two_labels, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "probe"
    rc, stdout, err = cli(capsys, "probe", "--model", str(tiny_dir), "--dataset", str(two_labels), "--out", str(out),
                          "--folds", "3", "--seeds", "0,1", "--n-permutations", "10")
    assert rc == 0 and not err, err
    assert "baseline: the mean of all class means (reviews.csv has no 'neutral' class)" in stdout.replace(
        str(two_labels), "reviews.csv")
    rd = RunDir.open(out)
    m = rd.read_manifest()
    assert [r.status for _, r in m.ordered_stages()] == ["done", "done", "done"]
    assert m.stages["vectors"].metrics["baseline"] == "all"
    assert any(n.startswith("baseline: the mean of all class means") for n in m.stages["vectors"].notes)
    praise = ConceptVector.load(out / "vectors" / "praise.safetensors")
    complaint = ConceptVector.load(out / "vectors" / "complaint.safetensors")
    assert praise.meta["baseline"] == "all"
    # against the mean of the two class means the two vectors are exact opposites
    for layer in praise.layers:
        assert abs(float(praise[layer] @ complaint[layer]) + float(praise[layer] @ praise[layer])) < 1e-3 * float(
            praise[layer] @ praise[layer])
    assert pd.read_csv(rd.tables / "probe_layers.csv").acc.notna().all()
    assert main(["audit", str(out)]) in (0, 1) and main(["report", str(out)]) == 0


def test_steer_on_two_labels_without_neutral(tiny_dir, two_labels, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "steer"
    rc, stdout, err = cli(capsys, "steer", "--model", str(tiny_dir), "--emotion", "praise", "--dataset",
                          str(two_labels), "--layers", "1", "--strengths", "-1,0,1", "--n-prompts", "2",
                          "--max-new-tokens", "4", "--n-random", "1", "--scorers", "vader,repetition", "--out", str(out))
    assert rc == 0, err
    assert "generations" in stdout and "vector: difference of means of 'praise' minus the mean of all classes" in stdout
    rd = RunDir.open(out)
    vec = ConceptVector.load(out / "steer" / "vector.safetensors")
    assert vec.name == "praise" and vec.meta["baseline"] == "all" and vec.meta["strength_unit"]["name"] == "token_norm"
    outputs = pd.read_csv(rd.tables / "steer_outputs.csv")
    assert set(outputs.kind) == {"baseline", "vector", "random"}
    finding = next(f for f in rd.ledger.read() if f.kind == "steering" and f.controls)
    multi = next(c for c in finding.controls if c.name == "multi_token_outputs")
    assert multi.passed is (multi.value >= 2.0) and multi.value > 1


def test_multi_token_control_fails_on_one_token_outputs(tiny_dir, two_labels, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    spec = parse_spec({"name": "one-token", "model": str(tiny_dir), "dataset": str(two_labels), "stages": ["steer"],
                       "steer": {"emotion": "complaint", "layers": [1], "strengths": [-1, 1], "n_prompts": 2,
                                 "max_new_tokens": 1, "n_random": 1, "scorers": ["vader"]}})
    rd = run_spec(spec, tmp_path / "run", report=False)
    finding = next(f for f in rd.ledger.read() if f.kind == "steering" and f.controls)
    multi = next(c for c in finding.controls if c.name == "multi_token_outputs")
    assert multi.passed is False and multi.value <= 1
    assert finding.verdict != "ships"


@pytest.mark.parametrize("rows,argv,needle", [
    ([("good", "praise")] * 20, ["probe"], "has one class ('praise'); stage 'vectors' needs at least 2 classes"),
    ([("good", "praise")] * 20 + [("bad", "complaint")] * 4, ["probe"],
     "class 'complaint' has 4 text(s); the probe needs at least 7 per class for 5 folds after a 20% held-out split"),
    (None, ["probe", "--baseline", "neutral"], "vectors: baseline 'neutral' is not a class of"),
    (None, ["steer", "--emotion", "joy"], "steer: emotion 'joy' is not a class"),
    (None, ["steer", "--emotion", "praise", "--baseline", "calm"], "(classes: complaint, praise); give one of them or 'all'"),
    ([("good", "praise")] * 20, ["steer", "--emotion", "praise"], "has one class ('praise'); stage 'steer'"),
])
def test_unusable_input_is_refused_before_the_model_loads(tmp_path, two_labels, capsys, no_model, rows, argv, needle):
    data = two_labels if rows is None else write_csv(tmp_path / "mine.csv", rows)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, *argv, "--model", "tiny", "--dataset", str(data), "--out", str(out))
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("emoscope: error: ") and needle in err, err
    assert not out.exists()


def test_run_spec_checks_inputs_too(tmp_path, no_model):
    """The same checks guard `emoscope run SPEC` (and the Python API)."""
    one = write_csv(tmp_path / "one.csv", [("good", "praise")] * 20)
    spec = parse_spec({"name": "one", "model": "tiny", "dataset": str(one), "stages": ["extract", "probe"]})
    with pytest.raises(InputError, match="has one class"):
        run_spec(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec.to_yaml())
    assert main(["--quiet", "run", str(spec_file), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_geometry_refuses_two_classes_without_neutral(tmp_path, two_labels, no_model):
    spec = parse_spec({"name": "g", "model": "tiny", "dataset": str(two_labels), "stages": ["extract", "geometry"]})
    with pytest.raises(InputError, match="exact opposites"):
        run_spec(spec, tmp_path / "run")


def test_probe_transfer_control_passes_on_the_same_data_and_fails_on_shuffled_labels(tiny_dir, two_labels, tmp_path,
                                                                                     monkeypatch):
    """The generalisation control: a probe fitted on one dataset scored on a second one."""
    import random

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    rows = [(t, "praise") for t in PRAISE] + [(t, "complaint") for t in COMPLAINT]
    labels = [y for _, y in rows]
    random.Random(0).shuffle(labels)
    shuffled = write_csv(tmp_path / "shuffled.csv", [(t, y) for (t, _), y in zip(rows, labels, strict=True)])
    verdicts = {}
    for name, target in (("same", two_labels), ("shuffled", shuffled)):
        spec = parse_spec({"name": f"t-{name}", "model": str(tiny_dir), "dataset": str(two_labels),
                           "stages": ["extract", "probe"], "extract": {"layers": [1, 2], "position": "mean"},
                           "probe": {"n_folds": 3, "seeds": [0], "n_permutations": 5, "transfer": str(target)}},
                          source="test")
        rd = run_spec(spec, tmp_path / name, report=False)
        (finding,) = [f for f in rd.ledger.read() if f.kind == "probe"]
        control = next(c for c in finding.controls if c.name == "transfer")
        verdicts[name] = (control.value, control.passed)
    # scored on the texts it was fitted on, a probe of a separable tiny-model layer is near perfect;
    # on the same texts with shuffled labels it is near chance and the control fails
    assert verdicts["same"][1] is True and verdicts["same"][0] > 0.8
    assert verdicts["shuffled"][1] is False and verdicts["shuffled"][0] < 0.75


def test_transfer_dataset_without_shared_classes_is_refused_before_the_model_loads(tmp_path, two_labels, no_model):
    other = write_csv(tmp_path / "other.csv", [(t, "calm") for t in PRAISE] + [(t, "worry") for t in COMPLAINT])
    spec = parse_spec({"name": "t", "model": "m", "dataset": str(two_labels), "stages": ["extract", "probe"],
                       "probe": {"transfer": str(other)}}, source="test")
    with pytest.raises(InputError, match="shares 0 class"):
        run_spec(spec, tmp_path / "run")
