"""End to end: the planted length confound, run through extract -> probe -> ledger -> audit,
ends as a finding that does not ship, with the length-only baseline named as the reason."""

from __future__ import annotations

from emoscope.cli.main import main
from emoscope.runs import run_spec
from emoscope.runs.spec import parse_spec


def test_length_confound_is_not_an_emotion_finding(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    spec = parse_spec({
        "name": "confound", "model": str(tiny_dir), "dataset": "length-confound", "seed": 0,
        "stages": ["extract", "probe"],
        "extract": {"layers": "all", "position": "mean"},
        "probe": {"n_folds": 3, "seeds": [0], "n_permutations": 10, "nullspace_k": 1},
    }, source="test")
    rd = run_spec(spec, tmp_path / "run", log=lambda _m: None)
    probe = [f for f in rd.ledger.read() if f.kind == "probe"]
    assert len(probe) == 1
    finding = probe[0]
    assert finding.claim and finding.verdict in ("fails", "needs controls")
    assert any("length-only baseline" in r for r in finding.reasons), finding.reasons
    length = next(c for c in finding.controls if c.name == "length_baseline")
    assert length.passed is False and length.value >= 0.9
    # The audit gate fails on it, and the report names the reason.
    assert main(["audit", str(rd.root)]) == 1
    html = (rd.root / "report.html").read_text()
    assert "length-only baseline" in html
