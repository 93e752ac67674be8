"""The strength unit of the injection sweep: what strength 1 means at each layer.

``trial_norm`` (the default) is the mean residual norm at the injected layer on the detection
trial prompt without injection, every token but the first (``resid_norm_profile``, whose table
also shows how much of that norm massive dimensions carry); ``token_norm`` and
``token_norm_robust`` are measured on neutral text (``emoscope.vectors.strength``). The sweep
(``emoscope.introspection.sweep``, which re-exports ``resid_norm_profile``) scales every
injected vector to ``strength × unit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from emoscope.errors import InputError
from emoscope.introspection.trials import Trial
from emoscope.models.interventions import Injector
from emoscope.models.standard import StandardModel
from emoscope.vectors.strength import MEASURED, measure_unit, norm_profile

__all__ = ["resid_norm_profile", "unit_values"]


@torch.inference_mode()
def resid_norm_profile(model: StandardModel, trial: Trial, layers: Sequence[int]) -> pd.DataFrame:
    """Per layer, over the tokens of ``trial`` after the first, without injection: the unit
    ``trial_norm`` (``mean_resid_norm``, mean ``‖resid[l]‖``), the dimension that carries most of
    ``‖resid[l]‖²`` (``top_dim``, ``top_dim_share``), ``mean_norm_without_top_dim``, and the
    norm without every massive dimension (``mean_norm_robust``; see ``emoscope.vectors.strength``).

    Why: models with massive activations put most of the norm into one dimension (Gemma-3-270M:
    dimension 163 holds ~90% of ``‖resid‖²`` from layer 5 on), so one "mean residual norm" is many
    times the rest of the residual, and a random direction of that norm lands almost entirely
    in the other dimensions. The table lets a reader see when that is so.
    """
    with Injector(model) as inj:
        S = len(trial.ids)
        inj.gather = torch.arange(1, S, device=model.device)[None].expand(1, -1)
        model.base(input_ids=torch.tensor([list(trial.ids)], device=model.device))
        rows = []
        for layer in layers:
            h = inj.captured[layer][0].float().cpu().numpy()  # (S - 1, d_model)
            prof = norm_profile(h)
            top = prof["top_dim"]
            sq = (h.astype(np.float64) ** 2).sum(1)
            rest = float(np.sqrt(np.clip(sq - h[:, top].astype(np.float64) ** 2, 0.0, None)).mean())
            rows.append({"layer": int(layer), "relative_depth": int(layer) / model.n_layers,
                         "mean_resid_norm": prof["token_norm"], "top_dim": top,
                         "top_dim_share": prof["top_dim_share"], "mean_norm_without_top_dim": rest,
                         "mean_norm_robust": prof["token_norm_robust"],
                         "massive_dims": ",".join(str(x) for x in prof["massive_dims"])})
    return pd.DataFrame(rows)


def unit_values(model: StandardModel, unit: str, norms_df: pd.DataFrame, layers: Sequence[int]) -> dict[int, float]:
    """Strength-1 norm per layer: ``trial_norm`` from the trial prompt's profile, or a unit
    measured on neutral text (``emoscope.vectors.strength``)."""
    if unit == "trial_norm":
        return {int(r.layer): float(r.mean_resid_norm) for r in norms_df.itertuples()}
    if unit in MEASURED:
        return measure_unit(model, layers, unit).values
    raise InputError(f"introspection unit must be 'trial_norm' or one of {MEASURED}, got {unit!r}")
