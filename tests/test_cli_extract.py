"""CLI and API behaviour on bad input for models and extraction: one line, exit 2, typed
exceptions, and nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emoscope.cli.main import main
from emoscope.errors import OfflineError, UnknownModelError
from emoscope.models import load_model
from tests.conftest import tiny_model


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str, needle: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


def test_local_dir_load_matches_memory_model(tiny_dir):
    m = load_model(str(tiny_dir))
    assert m.source["kind"] == "local" and len(m.weights_sha256) == 64
    ref = tiny_model("llama")
    from emoscope.activations import extract

    a = extract(m, ["Thank you so much."], layers="all", cache=False, progress=False)
    b = extract(ref, ["Thank you so much."], layers="all", cache=False, progress=False)
    for layer in a.layers:
        np.testing.assert_allclose(a.get(layer), b.get(layer), rtol=1e-6)


def test_extract_cli_writes_and_hits_cache(tiny_dir, tmp_path, capsys, monkeypatch):
    from emoscope.activations import Activations
    from emoscope.runs import RunDir

    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    texts = tmp_path / "t.jsonl"
    texts.write_text('{"text": "Thank you so much."}\n{"text": "The bus is late."}\n')
    out = tmp_path / "acts"
    rc, stdout, _ = run_cli(capsys, "--quiet", "extract", "--model", str(tiny_dir), "--texts", str(texts),
                            "--layers", "all", "--position", "last", "--out", str(out))
    assert rc == 0 and "2 texts x 3 layers" in stdout and "cache hit" not in stdout
    # the activations the user asked for, next to the run record of a one-stage run
    manifest = json.loads((out / "activations" / "manifest.json").read_text())
    assert manifest["layers"] == [0, 1, 2] and manifest["position"] == "last"
    acts = Activations.load(out / "activations")
    assert acts.get(2).shape == (2, 32)
    rd = RunDir.open(out)
    m = rd.read_manifest()
    assert m.stage_order == ["extract"] and m.status == "done" and rd.report_path.is_file()
    assert (rd.tables / "activation_norms.csv").is_file()
    assert main(["audit", str(out)]) == 0  # observations only: nothing blocks
    capsys.readouterr()
    # a second run elsewhere reads the cache; the same --out needs --resume (and keeps the done stage)
    rc, stdout, _ = run_cli(capsys, "--quiet", "extract", "--model", str(tiny_dir), "--texts", str(texts),
                            "--out", str(tmp_path / "again"))
    assert rc == 0 and "cache hit" in stdout
    rc, _, err = run_cli(capsys, "extract", "--model", str(tiny_dir), "--texts", str(texts), "--out", str(out))
    assert rc == 2 and "--resume" in err
    rc, _, _ = run_cli(capsys, "--quiet", "extract", "--model", str(tiny_dir), "--texts", str(texts),
                       "--out", str(out), "--resume")
    assert rc == 0 and RunDir(out).read_manifest().stages["extract"].attempts == 1


@pytest.mark.parametrize("content,args,needle", [
    ("", [], "empty"),
    ('{"text": "ok"}\n{"text": broken\n', [], ":2"),
    ('{"text": "ok"}\n{"text": "   "}\n', [], "2"),
    ('{"text": "ok"}\n', ["--position", "middle"], "unknown position"),
])
def test_extract_cli_bad_input_is_refused_before_anything(tiny_dir, tmp_path, capsys, content, args, needle):
    """Input errors found without the model: one line, exit 2, and no run directory at all."""
    texts = tmp_path / "t.jsonl"
    texts.write_text(content)
    out = tmp_path / "acts"
    rc, _, err = run_cli(capsys, "extract", "--model", str(tiny_dir), "--texts", str(texts), "--out", str(out),
                         "--no-cache", *args)
    assert rc == 2
    one_line_error(err, needle)
    assert not out.exists(), "no partial files"


@pytest.mark.parametrize("model,args,needle", [
    (None, ["--layers", "9"], "layer 9 is out of range"),
    ("no-such-model", [], "smollm2-135m"),
])
def test_extract_cli_model_errors_leave_no_run_dir(tiny_dir, tmp_path, capsys, model, args, needle):
    """A layer past the model's depth (read from its config.json) and an unknown model name are
    refused before anything is written: one line, exit 2, no run directory, and no advice to
    resume (the arguments must change). The fixed command then runs into the same --out."""
    texts = tmp_path / "t.jsonl"
    texts.write_text('{"text": "ok"}\n')
    out = tmp_path / "acts"
    rc, _, err = run_cli(capsys, "--quiet", "extract", "--model", model or str(tiny_dir), "--texts", str(texts),
                         "--out", str(out), "--no-cache", *args)
    assert rc == 2
    one_line_error(err, needle)
    assert "--resume" not in err
    assert not out.exists()
    rc, _, err = run_cli(capsys, "--quiet", "extract", "--model", str(tiny_dir), "--texts", str(texts),
                         "--out", str(out), "--no-cache")
    assert rc == 0, err
    assert (out / "activations" / "activations.safetensors").is_file()


def test_extract_cli_unwritable_out(tiny_dir, tmp_path, capsys):
    texts = tmp_path / "t.jsonl"
    texts.write_text('{"text": "ok"}\n')
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = run_cli(capsys, "extract", "--model", str(tiny_dir), "--texts", str(texts), "--out", str(blocker / "sub"))
    assert rc == 2
    one_line_error(err, "output")


def test_missing_texts_file(tiny_dir, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "extract", "--model", str(tiny_dir), "--texts", str(tmp_path / "nope.jsonl"),
                         "--out", str(tmp_path / "o"))
    assert rc == 2
    one_line_error(err, "nope.jsonl")


def test_unknown_alias_and_offline_hub(monkeypatch):
    with pytest.raises(UnknownModelError, match="smollm2-135m"):
        load_model("smolm2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="offline|HF_HUB_OFFLINE"):
        load_model("someorg/some-model")


def test_models_cli_lists_embedded(capsys):
    rc, out, _ = run_cli(capsys, "models", "--json")
    rows = {r["alias"]: r for r in json.loads(out)}
    assert rc == 0 and set(rows) >= {"smollm2-135m", "gemma3-270m"}
    assert rows["smollm2-135m"]["n_layers"] == 30 and rows["gemma3-270m"]["d_model"] == 640


def test_bad_argument_is_one_line(capsys):
    rc, _, err = run_cli(capsys, "extract", "--model", "x", "--texts", "t", "--out", "o", "--batch-size", "abc")
    assert rc == 2
    one_line_error(err, "batch-size")


def test_unknown_layout_names_the_fix():
    from emoscope.errors import LayoutError
    from emoscope.models.standard import get_layout

    with pytest.raises(LayoutError, match="layout=Layout"):
        get_layout("mamba")
