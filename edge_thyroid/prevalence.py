"""p(malignant) read at a site's own share of malignant nodules.

A model trained with the classes sampled equally gives p as it would read where half the nodules are
malignant (the bundle's ``probability.prior``; README "What p(malignant) means"). A site where 10% are
gives ``--prevalence 0.1``: every p it shows (frame, smoothed, per pane) and the threshold are moved by
Bayes' rule, the odds scaled by the ratio of the two prevalences' odds. The move is monotone and is
applied to what is shown, never to what decides: the temporal filter and the threshold comparison run on
the model's own p, so every decision is the same at any prevalence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import InputError
from .head import sigmoid


@dataclass(frozen=True)
class Prevalence:
    """Read p where ``site`` of the nodules are malignant, from a model whose p assumes ``model``."""

    site: float
    model: float

    def __post_init__(self) -> None:
        for name, value in (("--prevalence", self.site), ("the model's probability.prior", self.model)):
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise InputError(f"{name} is {value!r}; expected the share of malignant nodules, in (0, 1)")

    @property
    def offset(self) -> float:
        """What the move adds to a log-odds."""
        return math.log(self.site / (1 - self.site)) - math.log(self.model / (1 - self.model))

    def p(self, p: float | None) -> float | None:
        """``p`` at the site's prevalence (None stays None; 0 and 1 stay 0 and 1)."""
        if p is None or p <= 0.0 or p >= 1.0:
            return p
        return sigmoid(math.log(p / (1 - p)) + self.offset)

    def logit(self, logit: float | None) -> float | None:
        return None if logit is None else logit + self.offset

    def to_dict(self) -> dict[str, Any]:
        return {"prevalence": self.site, "model_prior": self.model}


def model_prior(manifest_entry: Any) -> float | None:
    """The share of malignant nodules a bundle's p assumes (manifest ``probability.prior``: a number, not a
    boolean), or None; the manifest reader refuses an entry whose prior this does not give in (0, 1)."""
    if not isinstance(manifest_entry, dict):
        return None
    prior = manifest_entry.get("prior")
    return float(prior) if isinstance(prior, (int, float)) and not isinstance(prior, bool) else None


def site_prevalence(site: float | None, manifest_entry: Any, bundle: str) -> Prevalence | None:
    """The move for ``--prevalence site`` on a bundle (None without the option); a bundle that does not
    record what its p assumes is an error: the move would be a guess."""
    if site is None:
        return None
    prior = model_prior(manifest_entry)
    if prior is None:
        raise InputError(f"--prevalence {site}: bundle {bundle} does not record which share of malignant nodules "
                         "its p assumes (manifest probability.prior); expected a bundle exported with "
                         "--probability-prior (0.5 for a model trained on equally sampled classes)")
    return Prevalence(float(site), prior)
