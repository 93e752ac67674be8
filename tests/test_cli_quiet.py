"""``--quiet`` silences every bar, including the one transformers draws (with a bare tqdm, not
behind its logging switch) while it dequantises a GGUF file on a model's first load."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# After the command, draw the bar exactly as transformers' GGUF loader does (same module, same tqdm).
CODE = """
import sys
from emoscope.cli.main import main
rc = main(sys.argv[1:])
from transformers import modeling_gguf_pytorch_utils as gguf_utils
for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
    pass
sys.exit(rc)
"""
BAR = "Converting and de-quantizing GGUF tensors"


def _stderr(*argv: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_") and k != "EMOSCOPE_QUIET"}
    out = subprocess.run([sys.executable, "-c", CODE, *argv], capture_output=True, text=True, env=env, timeout=300)
    return out.returncode, out.stderr


def test_quiet_silences_the_gguf_dequantising_bar(tmp_path):
    # parsing extract's arguments imports its stage module, and with it tqdm, before the command runs
    argv = ["extract", "--model", "no-such-model", "--dataset", "emotions-basic", "--out", str(tmp_path / "x")]
    rc, err = _stderr(*argv)
    assert BAR in err  # the bar shows without --quiet
    rc_quiet, err_quiet = _stderr("--quiet", *argv)
    assert rc_quiet == rc and BAR not in err_quiet, err_quiet[-500:]


@pytest.mark.real
def test_quiet_first_load_of_the_embedded_gguf_prints_no_bar(tmp_path):
    """A first load (an empty cache) dequantises the embedded GGUF: with --quiet, nothing on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    env["EMOSCOPE_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-m", "emoscope.cli.main", "--quiet", "extract", "--model", "smollm2-135m",
                          "--dataset", "emotions-basic", "--layers", "0", "--out", str(tmp_path / "acts")],
                         capture_output=True, text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Converting and de-quantizing" not in out.stderr and "%|" not in out.stderr
