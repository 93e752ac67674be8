"""Run stage ``modes``: generation- vs comprehension-based extraction in a 2x2, plus token-based.

The model writes texts for each emotion (``emoscope.elicit.generate.elicit``, states captured
while it writes); the same emotions' built-in texts are read; the template set gives the
token-based arm (``emoscope.elicit.arms``). Per arm, layer and pooling, and per emotion with its
own one-vs-rest model (``emoscope.elicit.compare``): held-out probe accuracy, separation
(held-out Cohen's d), crossed accuracy (train on one arm, test on another); per arm and emotion,
a vector (class minus neutral; token-based: word minus twin) steered at one layer and strength
against random vectors of the same norm (``emoscope.elicit.success``). Paired Wilcoxon
signed-rank tests over emotions compare the arms; what each vector promotes through the
unembedding is listed (``emoscope.vectors.promote``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emoscope.core.stages import StageResult, register_stage
from emoscope.elicit.arms import PAIRS

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["ModesOptions", "modes_stage", "check_modes", "PAIRS"]

EMOTIONS_12 = ["anger", "calm", "desperation", "disgust", "fear", "gratitude", "joy", "love", "pride", "sadness",
               "shame", "surprise"]

class ModesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emotions: list[str] = Field(default_factory=lambda: list(EMOTIONS_12))
    n: int = Field(16, ge=2)  # texts kept per emotion (and neutral) at most; the read arms use as many
    oversample: float = Field(2.0, ge=1.0, le=20.0)  # generate ceil(n * oversample) per class, keep the first n that pass
    max_new_tokens: int = Field(40, ge=2)
    temperature: float = Field(0.9, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    style: Literal["auto", "chat", "completion"] = "auto"
    layers: list[float | int] = Field(default_factory=lambda: [0.33, 0.5, 0.67])
    read_dataset: str = "emotions-12"
    token_dataset: str = "emotion-word-templates"
    folds: int = Field(4, ge=2)
    steer: bool = True
    steer_layer: float | int = 0.5  # one of `layers`
    strength: float = Field(0.5, gt=0)
    prompts: str = "neutral-starts"
    n_prompts: int = Field(8, ge=2)
    steer_tokens: int = Field(24, ge=2)
    n_random: int = Field(8, ge=2)
    promote_k: int = Field(10, ge=1)

    @field_validator("emotions")
    @classmethod
    def _emotions(cls, v: list[str]) -> list[str]:
        from emoscope.elicit.prompts import check_emotions

        return check_emotions(v)


def check_modes(spec, dataset) -> None:  # noqa: ANN001 - emoscope.runs.Spec, a Dataset or None
    """Before any model loads: the read and template sets have every emotion and neutral, with
    enough texts for the folds; at least 2 emotions."""
    from emoscope.datasets import load_dataset
    from emoscope.errors import InputError

    opts: ModesOptions = spec.options("modes")
    if len(opts.emotions) < 2:
        raise InputError("modes: give at least 2 emotions (12 or more for a useful paired test)")
    for name in (opts.read_dataset, opts.token_dataset):
        counts = load_dataset(name).counts()
        for c in [*opts.emotions, "neutral"]:
            if counts.get(c, 0) < opts.folds:
                raise InputError(f"modes: {name} has {counts.get(c, 0)} texts of {c!r}; the {opts.folds}-fold "
                                 f"comparison needs at least {opts.folds} (choose emotions it has: "
                                 f"{', '.join(sorted(counts))})")
    if opts.n < opts.folds:
        raise InputError(f"modes: n={opts.n} texts per emotion is fewer than folds={opts.folds}")


@register_stage("modes", options_model=ModesOptions, check=check_modes,
                description="generation- vs comprehension-based extraction (2x2) and token-based vectors, paired over emotions")
def modes_stage(ctx: RunContext) -> StageResult:
    from emoscope.elicit.mode_comparison import run_modes

    return run_modes(ctx, PAIRS)
