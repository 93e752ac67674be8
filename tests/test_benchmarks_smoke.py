"""Every benchmark under benchmarks/ runs in its ``--smoke`` mode (a tiny random model, seconds),
through ``run_all.py`` as ``make bench`` runs them, and writes its JSON: the summary ``run_all``
tabulates (emoscope's time, baselines, the ceiling and the fraction of it reached) and the
correctness checks each benchmark makes (greedy agreement, parity with raw hooks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CEILINGS = {"extract", "steer", "introspect", "patch", "heads", "elicit"}  # a FLOP ceiling at least
SUMMARY = {"workload", "emoscope_s", "baselines_s", "ceiling_s", "ceiling_kind", "fraction_of_ceiling", "speedup"}


def test_every_benchmark_runs_in_smoke_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(BENCH))
    import run_all

    out = tmp_path / "bench"
    assert run_all.main(["--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    combined = json.loads((out / "bench.json").read_text())
    names = run_all.names()
    assert {"cross_model", "dtypes", "elicit", "executor", "extract", "heads", "introspect", "patch",
            "steer"} <= set(names)
    assert set(combined["benchmarks"]) == set(names) and combined["failed"] == [] and combined["smoke"]
    assert "of ceiling" in printed
    data = {n: json.loads((out / f"{n}.json").read_text()) for n in names}
    for name, d in data.items():
        assert d["benchmark"] == name and d["smoke"] is True
        for s in [d["summary"], *d.get("more_summaries", [])]:
            assert set(s) == SUMMARY, name
            assert s["emoscope_s"] > 0 and s["workload"] in printed
            for k, v in s["baselines_s"].items():  # every speedup is its baseline over emoscope's time
                assert math.isclose(s["speedup"][k], v / s["emoscope_s"])
            if name in CEILINGS:
                c = d["ceiling"] if "ceiling" in d else None
                assert s["ceiling_s"] > 0 and s["ceiling_kind"] in ("bare", "flops")
                assert math.isclose(s["fraction_of_ceiling"], s["ceiling_s"] / s["emoscope_s"])
                if c is not None:  # the ceiling is the smaller of its two bounds
                    bounds = [x for x in (c["bare_seconds"], c["flop_seconds"]) if x]
                    assert math.isclose(c["seconds"], min(bounds)) and c["flops"] > 0
                    assert set(c["matmul_gflops"]) >= {"float32", "bfloat16"}
    # the correctness each benchmark checks beside its timing
    assert data["steer"]["results"]["emoscope_batched"]["agreement_vs_8_calls"]["mismatch"] == 0
    assert data["steer"]["results"]["scoring"]["max_rel_diff_vs_scratch"] < 1e-4
    assert data["extract"]["max_rel_diff_vs_bare_hidden_states"] < 1e-5
    assert data["introspect"]["max_abs_logit_diff_batched_vs_loop"] < 1e-4
    assert data["patch"]["results"]["hf_one_at_a_time"]["agreement_vs_emoscope"]["mismatch"] == 0
    assert data["heads"]["ablation"]["all"]["agreement_batched_vs_alone"]["mismatch"] == 0
    assert data["executor"]["ray"] == {"skipped": "--smoke / --skip-ray"}
    cmp = data["dtypes"]["comparison"]  # bf16 against fp32: the same findings, row by row
    assert cmp["findings_a"] == cmp["findings_b"] > 0 and cmp["rows"]["rows"] > 0
    assert {"corr_target_score", "corr_perplexity", "identical_tokens"} <= set(cmp["rows"])


def test_gpu_script_runs_on_the_cpu(tmp_path):
    """``benchmarks/gpu.sh --device cpu``: the GPU run's checks on the CPU with the tiny model."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "EMOSCOPE_CACHE": str(tmp_path / "cache"), "PYTHON": sys.executable}
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--device", "cpu", "--smoke", "--checks-only", "--out",
                           str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    checks = json.loads((out / "gpu_checks.json").read_text())
    assert checks["passed"] and checks["device"] == "cpu"
    for dtype in ("float32", "bfloat16"):
        c = checks[dtype]
        assert c["extraction"]["passed"] and c["steering"]["rows"] > 0 and c["steering"]["mismatch"] == 0
        assert c["injection"]["passed_grid"]
    assert checks["float32"]["extraction"]["max_rel_diff_vs_raw_hooks"] < 1e-5
    split = checks["device_map_split"]
    assert split["greedy_identical_rows"] == split["rows"] > 0 and len(split["steered_layers"]) == 2
    bad = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--bogus"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr
