"""Stage ``elicit``: the model writes short texts for each emotion (and neutral), saved as a dataset.

One seeded, batched decode (``emoscope.elicit.elicit``) over emotions x samples; texts that name
the emotion, empty texts and duplicates are dropped and counted. The kept texts are written to
``RUN/elicit/NAME.jsonl`` with a card (``NAME.card.md``), which ``--dataset RUN/elicit/NAME.jsonl``
reads like any dataset, next to the tables ``elicit_counts`` (per class: generated, kept and each
rejection reason) and ``elicit_texts`` (every generated row with its status). The sampling
seed is the run's seed. ``ElicitOptions`` is the one source of defaults (``emoscope elicit``
takes its flags' defaults and help from it).

Everything that can be checked without the model is checked before the run starts
(``check_elicit``): the emotion names, counts, sampling settings, the file name, and a chat
style asked of a model known to have no chat template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emoscope.core.stages import StageResult, register_stage
from emoscope.errors import InputError, ModelError

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["ElicitOptions", "elicit_stage", "check_elicit", "SAVE_DIR"]

SAVE_DIR = "elicit"  # RUN/elicit/NAME.jsonl + NAME.card.md
_STYLE: dict[str, bool | str] = {"auto": "auto", "chat": True, "completion": False}


class ElicitOptions(BaseModel):
    """Options of the ``elicit`` section (``emoscope elicit`` builds these)."""

    model_config = ConfigDict(extra="forbid")

    emotions: list[str] = Field(default_factory=lambda: ["joy", "sadness", "anger", "fear"],
                                description="comma-separated emotion names (neutral is always elicited too)")
    n: int = Field(30, description="texts kept per emotion at most")
    oversample: float = Field(1.0, description="generate ceil(n * oversample) per class and keep the first n that "
                                               "pass (1 to 20)")
    max_new_tokens: int = Field(40, description="tokens generated per text at most")
    temperature: float = Field(0.9, ge=0.0, description="sampling temperature (above 0: every text differs)")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling")
    top_k: int = Field(0, ge=0, description="top-k sampling (0: off)")
    style: Literal["auto", "chat", "completion"] = Field(
        "auto", description="chat template (instruct models), completion prompt (base models), or auto")
    name: str = Field("elicited", description="file stem of the dataset (RUN/elicit/NAME.jsonl)")

    @field_validator("emotions", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:  # empty entries are kept, so the check can name them
        return [x.strip() for x in v.split(",")] if isinstance(v, str) else v


def check_elicit(spec, dataset) -> None:  # noqa: ANN001, ARG001 - emoscope.runs.Spec; no dataset is read
    """Before the run starts: names, counts, sampling, the file name, and the chat style."""
    from emoscope.elicit.generate import check_request
    from emoscope.models.shape import known_chat_template

    opts: ElicitOptions = spec.options("elicit")
    check_request(None, opts.emotions, opts.n, opts.max_new_tokens, _STYLE[opts.style])
    if opts.temperature == 0 and opts.n > 1:
        raise InputError("elicit: --temperature 0 is greedy: every text of an emotion would be the same; use e.g. 0.9")
    if not 1.0 <= opts.oversample <= 20.0:
        raise InputError(f"--oversample must be between 1 and 20, got {opts.oversample}")
    if not opts.name or not all(ch.isalnum() or ch in "-_." for ch in opts.name) or opts.name.startswith("."):
        raise InputError(f"--name {opts.name!r} must be letters, digits, '-', '_' or '.' (not first)")
    if opts.style == "chat" and known_chat_template(spec.model) is False:
        raise ModelError(f"{spec.model} has no chat template, so it cannot be asked through one; use --style "
                         "completion (a base-model prompt the text continues)")


@register_stage("elicit", options_model=ElicitOptions, check=check_elicit,
                description="texts the model writes for each emotion (a generation-based dataset)")
def elicit_stage(ctx: RunContext) -> StageResult:
    import pandas as pd

    from emoscope._progress import is_quiet
    from emoscope.elicit.dataset import save_elicited
    from emoscope.elicit.generate import elicit

    opts: ElicitOptions = ctx.options
    model = ctx.model
    el = elicit(model, opts.emotions, opts.n, seed=ctx.seed, max_new_tokens=opts.max_new_tokens,
                temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k, chat=_STYLE[opts.style],
                oversample=opts.oversample, progress=not is_quiet())
    path = save_elicited(el, ctx.run_dir.root / SAVE_DIR, opts.name)
    counts = el.rejection_counts()
    ctx.write_table("elicit_counts", pd.DataFrame([{"class": lab, **c} for lab, c in counts.items()]))
    ctx.write_table("elicit_texts", pd.DataFrame({"row": range(len(el.labels)), "class": el.labels,
                                                  "status": el.status, "text": el.texts}))
    style = el.settings["style"]
    ctx.note(f"{style} prompt, seed {ctx.seed}, temperature {opts.temperature:g}, top-p {opts.top_p:g}; texts that "
             "name their emotion (or an inflection of its forbidden words), empty texts and duplicates are dropped")
    ctx.note(f"dataset: {SAVE_DIR}/{path.name} (read it with --dataset {ctx.run_dir.root / SAVE_DIR / path.name})")
    summary = (f"{getattr(model, 'name', ctx.spec.model)}: {len(el.kept)} of {len(el.labels)} texts kept ({style} "
               f"prompt, seed {ctx.seed}, {el.new_tokens} new tokens in {el.seconds:.1f} s) -> {SAVE_DIR}/{path.name}")
    return StageResult(summary=summary, metrics={"kept": len(el.kept), "generated": len(el.labels),
                                                 "seconds": round(el.seconds, 3), "new_tokens": el.new_tokens})
