"""The README's shell blocks run as written, and every command line in the docs parses.

Every ```sh / ```bash block of README.md is cut into command lines: a trailing backslash joins
lines, ``# ...`` after a command is a comment, and ``# exit N`` in that comment is the exit status
the line must end with (0 when it says nothing). Each ``emoscope ...`` line runs through
``emoscope.cli.main.main``, the function the ``emoscope`` script calls, with the test's temporary
directory as the working directory, so every ``runs/...`` of the README lands under ``tmp_path``.

- A block right after the line ``<!-- readme-test: real -->`` runs exactly as written on the
  embedded model (``test_real_blocks_run_as_written``, marked ``real``): the first walk and its
  audit. Those blocks run in order in one directory, so a later one reads an earlier one's runs,
  with the default ``$EMOSCOPE_CACHE`` (where the embedded model's dequantised weights are).
- Every other block runs on tiny random models (``test_block_runs_on_tiny_models``, one test per
  block, each in a fresh directory): the embedded aliases are replaced by directories holding
  tiny models of the same
  architectures (``TINY``), every other word as written.
- A line matching a pattern in ``SKIP`` is not run, for the reason given there. Every
  ``emoscope`` line of README.md is in a shell block that one of the tests above runs, or
  matches ``SKIP`` (``test_every_command_line_is_run_or_skipped``), so a new example cannot
  escape silently; a ``SKIP`` entry that matches nothing is an error too.
- Every ``emoscope`` line in any block of README.md and docs/*.md goes through the CLI parser,
  parse only (``test_every_command_line_parses``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from emoscope.cli.main import build_parser, main
from tests.conftest import tiny_model
from tests.helpers import intro_model

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
REAL_MARK = "<!-- readme-test: real -->"
SHELLS = ("sh", "bash", "shell", "console")

# README command lines that are not run here, and why (a regular expression, searched in the line).
SKIP = {
    r"^make (demo|test)\b": "sets up .venv and runs the demo or the whole suite (this test is part of `make test`)",
    r"^emoscope run (emotions|extraction-modes|leakage|cross-model)\b":
        "a built-in spec on the embedded models, tens of minutes to an hour on 2 CPU cores; its stages run "
        "on tiny models in their own tests (test_stages_e2e, test_modes, test_cross_model_run, test_elicit)",
}

# The embedded aliases and the tiny random models that stand in for them: SmolLM2 is an instruct
# llama, so a llama with a chat template and single-token yes/no spellings (concept injection reads
# them); Gemma-3 is a base model.
TINY = {"smollm2-135m": lambda: intro_model("llama", chat=True), "gemma3-270m": lambda: tiny_model("gemma3_text")}


@dataclass
class Command:
    text: str  # the command as one line (continuations joined), comment included
    line: int  # README line it starts on
    argv: list[str] = field(default_factory=list)  # the words, comment dropped
    exit: int = 0  # the exit status its comment states ("# exit N"), else 0

    @property
    def skip(self) -> str | None:
        return next((why for pat, why in SKIP.items() if re.search(pat, self.text)), None)


@dataclass
class Block:
    path: Path
    line: int  # line of the opening fence
    lang: str
    real: bool
    lines: list[str]

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def commands(self) -> list[Command]:
        """The block's command lines (a shell block, or an untagged one that holds commands)."""
        if self.lang not in (*SHELLS, ""):
            return []
        return split_commands(self.lines, self.line + 1)


def split_commands(lines: list[str], first_line: int) -> list[Command]:
    """The command lines of a block: continuations joined, blank and comment-only lines dropped."""
    out, buf, start = [], "", first_line
    for i, raw in enumerate(lines):
        if not buf:
            start = first_line + i
        line = raw.rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        text = (buf + line).strip()
        buf = ""
        if text.startswith("$ "):
            text = text[2:]
        if not text or text.startswith("#"):
            continue
        try:
            argv = shlex.split(text, comments=True)
        except ValueError as e:
            raise AssertionError(f"line {start}: {e}: {text}") from None
        stated = re.search(r"\s#\s*exit (\d+)\b", text)
        out.append(Command(text, start, argv, int(stated.group(1)) if stated else 0))
    return out


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with its language and whether it is marked real."""
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        found.append(Block(path, start + 1, lang, before == REAL_MARK, lines[start + 1:end]))
        i = end + 1
    return found


def shell_blocks(path: Path = README) -> list[Block]:
    return [b for b in blocks(path) if b.lang in SHELLS]


def run_block(block: Block, models: dict[str, str], capsys) -> None:
    """Run each command of ``block`` that is not skipped; fail with its output when its exit
    status is not the one the README states."""
    for cmd in block.commands:
        if cmd.skip:
            continue
        assert cmd.argv[0] == "emoscope", (
            f"{block.id}: line {cmd.line} is not an emoscope command; run it here or add it to SKIP with a reason: "
            f"{cmd.text}")
        assert not {"&&", "||", "|", ";", ">", "<"} & set(cmd.argv), f"line {cmd.line}: one command per line"
        argv = [models.get(word, word) for word in cmd.argv[1:]]
        capsys.readouterr()
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == cmd.exit, (f"README line {cmd.line} ended with exit {rc}, the README says {cmd.exit}: "
                                f"{cmd.text}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}")


# -- the checks that need no model -------------------------------------------------------------
def test_the_readme_has_a_real_walk_and_tiny_blocks():
    sh = shell_blocks()
    real = [b for b in sh if b.real]
    assert real and [c.argv[:2] for c in real[0].commands][:3] == [["emoscope", "probe"], ["emoscope", "steer"],
                                                                   ["emoscope", "report"]]
    assert any(not b.real and any(not c.skip for c in b.commands) for b in sh)
    # a real marker must sit right before a shell block (else that block would quietly run on tiny models)
    text = README.read_text(encoding="utf-8")
    assert text.count(REAL_MARK) == len(real)


def test_every_command_line_is_run_or_skipped():
    """Each emoscope line of the README is in a shell block (so a test below runs it) or skipped
    with a reason; each SKIP entry is used."""
    used = {pat for b in shell_blocks() for c in b.commands for pat in SKIP if re.search(pat, c.text)}
    escaped = [f"line {b.line + 1 + i} (a ```{b.lang} block): {text.strip()}" for b in blocks(README)
               if b.lang not in SHELLS for i, text in enumerate(b.lines)
               if re.match(r"\s*(\$ )?emoscope\s", text)]
    assert not escaped, "emoscope lines outside ```sh blocks are never run: " + "; ".join(escaped)
    assert used == set(SKIP), f"SKIP entries that match no README line: {set(SKIP) - used}"
    run = [c for b in shell_blocks() for c in b.commands if not c.skip]
    assert run and all(c.argv[0] == "emoscope" for c in run), [c.text for c in run if c.argv[0] != "emoscope"]


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_every_command_line_parses(path):
    parser = build_parser()
    checked = 0
    for b in blocks(path):
        if b.lang not in (*SHELLS, ""):
            continue
        for cmd in b.commands:
            if cmd.argv[:1] != ["emoscope"]:
                continue
            try:
                parser.parse_args(cmd.argv[1:])
            except SystemExit as e:  # argparse printed the reason on stderr
                raise AssertionError(f"{path.name} line {cmd.line} does not parse: {cmd.text}") from e
            checked += 1
    if path == README:
        assert checked >= 10


# -- the blocks, run -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Each embedded alias -> a directory with a tiny random model of the same family."""
    out = {}
    for alias, build in TINY.items():
        d = tmp_path_factory.mktemp(f"tiny-for-{alias}")
        m = build()
        m.hf.save_pretrained(d, safe_serialization=True)
        m.tokenizer.save_pretrained(d)
        out[alias] = str(d)
    return out


TINY_BLOCKS = [b for b in shell_blocks() if not b.real and any(not c.skip for c in b.commands)]


@pytest.mark.parametrize("block", TINY_BLOCKS, ids=lambda b: b.id)
def test_block_runs_on_tiny_models(block, tiny_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMOSCOPE_CACHE", str(tmp_path / "cache"))
    run_block(block, tiny_dirs, capsys)
    # what the README says a command wrote is there
    for cmd in block.commands:
        if "--out" in cmd.argv and not cmd.skip:
            out = tmp_path / cmd.argv[cmd.argv.index("--out") + 1]
            assert out.exists(), f"line {cmd.line}: {out} was not written"
            if cmd.argv[1] != "compare":
                assert (out / "report.html").is_file() and (out / "manifest.json").is_file()


@pytest.mark.real
def test_real_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    """The walk (probe -> steer -> report) and its audit, on the embedded SmolLM2-135M, as written."""
    monkeypatch.chdir(tmp_path)
    for block in [b for b in shell_blocks() if b.real]:
        run_block(block, {}, capsys)
    assert (tmp_path / "runs/probe/vectors/gratitude.safetensors").is_file()
    assert (tmp_path / "runs/steer/report.html").is_file()
