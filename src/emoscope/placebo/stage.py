"""Stage ``placebo``: the ship rate of decoys, per finding kind, from the run's decoy tables.

The stages before it ran with ``decoys: N`` in their sections (``emoscope placebo`` writes such a
spec): each wrote ``placebo_decoys_<stage>``, one row per (decoy, finding kind) with whether a claim
shipped once the run correction ran over that decoy's findings (``emoscope.core.decoys``). This
stage gathers them into ``placebo_rates`` (kind, decoys, how many shipped, the rate with its exact
95% interval), the figure ``placebo_rates``, and one ``placebo`` observation per kind. A rate whose
interval lies above the level says the pipeline ships decoys: its claims of that kind cannot be
read at face value on this model and data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from emoscope.core.stages import StageResult, register_stage
from emoscope.errors import InputError

if TYPE_CHECKING:
    from emoscope.runs.context import RunContext

__all__ = ["PlaceboOptions", "placebo_stage", "DECOY_STAGES", "check_placebo"]

#: stages that can run with decoys in their candidate's place, and what the candidate is
DECOY_STAGES = {"steer": "the steering vector", "introspect": "the concept vectors",
                "heads": "the chosen head set (ablate / patch modes)", "patch": "the patch source"}


class PlaceboOptions(BaseModel):
    """Options of the ``placebo`` section."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)  # the level the rates are compared with


def check_placebo(spec, dataset) -> None:  # noqa: ANN001, ARG001
    """Before any model loads: some earlier stage runs with decoys."""
    with_decoys = [s for s in spec.stages if s in DECOY_STAGES and getattr(spec.options(s), "decoys", 0)]
    if not with_decoys:
        raise InputError("the placebo stage needs a stage with decoys before it (steer, introspect, heads or patch "
                         "with `decoys: N` in its section); `emoscope placebo RUN --n N` writes such a spec")


@register_stage("placebo", options_model=PlaceboOptions, check=check_placebo,
                description="how often decoys (random draws in the candidate's place) ship a claim")
def placebo_stage(ctx: RunContext) -> StageResult:
    import pandas as pd

    from emoscope.audit import Finding, Observation
    from emoscope.core.decoys import rates_figure, ship_rates

    o: PlaceboOptions = ctx.options
    paths = sorted(ctx.tables_dir.glob("*placebo_decoys_*.csv"))
    if not paths:
        raise InputError("placebo: no decoy tables in this run (placebo_decoys_*): the stages with decoys wrote none")
    decoys = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    decoys["ships"] = decoys["ships"].astype(str).str.lower().isin(["true", "1"])
    rates = ship_rates(decoys, o.alpha)
    ctx.write_table("placebo_rates", rates)
    ctx.save_figure("placebo_rates", rates_figure(rates))
    for r in rates.itertuples():
        above = r.lo > o.alpha
        ctx.add_finding(Finding(kind="placebo", observation=Observation(
            metric=f"share of decoys whose {r.kind} claim ships ({r.stages}; each decoy one more random draw in the "
                   f"candidate's place, judged as the run's only candidate)",
            value=float(r.rate), interval=(float(r.lo), float(r.hi)), n=int(r.n_decoys), unit="decoys")))
        ctx.note(f"placebo, {r.kind}: {r.n_ship} of {r.n_decoys} decoys ship = {r.rate:.2f} [{r.lo:.2f}, {r.hi:.2f}]"
                 + (f": above the level {o.alpha:g}, the pipeline ships decoys here" if above else
                    f" (level {o.alpha:g})"))
    text = "; ".join(f"{r.kind} {r.n_ship}/{r.n_decoys} [{r.lo:.2f}, {r.hi:.2f}]" for r in rates.itertuples())
    return StageResult(summary=f"decoys shipping: {text}", metrics={"n_kinds": len(rates)})
