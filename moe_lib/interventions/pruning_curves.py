"""What a model loses when experts go: pruning curves, per-domain experts, fewer experts per token.

Three studies, each a list of labelled :class:`~moe_lib.interventions.ablation.Condition`
run together through the ablation grid on held-out texts (:func:`run_studies`), scored as
next-token loss per domain with bootstrap intervals over documents:

- ``curve``: n = 1 .. E/2 experts removed in every MoE layer, the n least important by a
  criterion (frequency, mean weight, REAP, causal; :data:`~moe_lib.interventions.pruning.CRITERIA`)
  or drawn at random (``n_draws`` draws per n);
- ``keep``: per domain, every layer keeps only the ``n_keep`` experts that domain's tokens
  are routed to most; measured on that domain and on the others;
- ``top_k``: each token keeps only its k' = 1 .. k - 1 largest routes, renormalised to the
  weight the k had (k' = k is the baseline).

Experts are removed as a pruned checkpoint removes them (``reroute=True``: masked in the
router, each token re-routed among the others) where the family allows it, else by
dropping their slots; the ``removal`` column says which.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.interventions import ablation
from moe_lib.interventions.ablation import Condition
from moe_lib.interventions.pruning import CRITERIA, criterion_score, least_important
from moe_lib.interventions.removal import REROUTE_RULES

LABELS = ("study", "curve", "n_removed", "draw", "kept_for", "top_k")


def _label(condition: Condition, **labels) -> tuple[Condition, dict]:
    return condition, {"study": "", "curve": "", "n_removed": 0, "draw": -1, "kept_for": "", "top_k": 0, **labels}


def random_removals(layers: Sequence[int], n_experts: int, n: int, draw: int, seed: int = 0) -> dict[int, list[int]]:
    """Return ``{layer: n expert ids}`` drawn uniformly without replacement, seeded by (seed, n, draw)."""
    rng = np.random.default_rng([seed, n, draw])
    return {int(layer): sorted(int(e) for e in rng.choice(n_experts, size=n, replace=False)) for layer in layers}


def curve_conditions(scores: xr.Dataset, n_values: Sequence[int], *, criteria: Sequence[str] = CRITERIA,
                     n_draws: int = 20, seed: int = 0, reroute: bool = True) -> list[tuple[Condition, dict]]:
    """Return the pruning curves' conditions, each with its labels (``curve``: a criterion or
    ``"random"``, ``n_removed``, ``draw``), from an importance Dataset (layer, expert)."""
    layers, n_experts = scores["layer"].to_numpy(), scores.sizes["expert"]
    labelled = []
    for n in n_values:
        for criterion in criteria:
            removed = least_important(criterion_score(scores, criterion), n)
            labelled.append(_label(Condition.removing(removed, reroute=reroute), study="curve", curve=criterion,
                                   n_removed=n))
        for draw in range(n_draws):
            removed = random_removals(layers, n_experts, n, draw, seed)
            labelled.append(_label(Condition.removing(removed, reroute=reroute), study="curve", curve="random",
                                   n_removed=n, draw=draw))
    return labelled


def domain_usage(measured: xr.Dataset, domains: Sequence[str]) -> xr.DataArray:
    """Return (domain, layer, expert) how many of each domain's tokens route to each expert."""
    routed = measured["doc_n_routed"].assign_coords(domain=("doc", np.asarray(domains, dtype=object)))
    return routed.groupby("domain").sum("doc")


def keep_conditions(usage: xr.DataArray, n_keep: int, *, reroute: bool = True) -> list[tuple[Condition, dict]]:
    """Return per domain the condition keeping, in every layer, only the ``n_keep`` experts
    the domain uses most (ties: the lower id is kept), labelled ``kept_for``."""
    labelled = []
    n_experts = usage.sizes["expert"]
    for domain in usage["domain"].to_numpy():
        removed = least_important(usage.sel(domain=domain, drop=True), n_experts - n_keep)
        labelled.append(_label(Condition.removing(removed, reroute=reroute), study="keep", kept_for=str(domain),
                               n_removed=n_experts - n_keep))
    return labelled


def topk_conditions(k: int) -> list[tuple[Condition, dict]]:
    """Return the conditions keeping each token's k' = 1 .. k - 1 largest routes, renormalised."""
    return [_label(Condition(slots=f"{kept}+", renormalize=True), study="top_k", top_k=kept) for kept in range(1, k)]


def can_reroute(family_scoring: str) -> bool:
    """Return whether a family's rule allows masking experts in the router (else slots are dropped)."""
    return family_scoring in REROUTE_RULES


def study_conditions(config, scores: xr.Dataset, scoring_domains: Sequence[str] | None, *, n_draws: int = 20,
                     seed: int = 0) -> list[tuple[Condition, dict]]:
    """Return the labelled conditions of the three studies for a model (its ``config``) and
    its importance ``scores``: n = 1 .. E/2 removed in every layer (each criterion and
    ``n_draws`` random draws), each domain of the scored texts keeping its E/2 most used
    experts (left out when ``scoring_domains`` is None or names one domain), and k' = 1 ..
    k - 1 experts per token."""
    from moe_lib.models.families import family_of, top_k

    reroute = can_reroute(family_of(config).scoring)
    n_experts = scores.sizes["expert"]
    labelled = curve_conditions(scores, range(1, n_experts // 2 + 1), n_draws=n_draws, seed=seed, reroute=reroute)
    if scoring_domains is not None and len(set(scoring_domains)) > 1:
        usage = domain_usage(scores, scoring_domains)
        labelled += keep_conditions(usage, n_experts - n_experts // 2, reroute=reroute)
    return labelled + topk_conditions(top_k(config))


def run_studies(model, tokenizer, texts: Sequence[str], domains: Sequence[str],
                labelled: Sequence[tuple[Condition, dict]], *, batch_size: int = 8, max_length: int = 256,
                progress: bool = True) -> pd.DataFrame:
    """Return per document and distinct condition the next-token loss (rows of
    :func:`~moe_lib.interventions.ablation.heldout_loss`) with a ``domain`` column.

    Conditions that coincide (a criterion's choice equal to a random draw) run once;
    :func:`summarize_studies` gives each of their labels its row.
    """
    unique = list(dict.fromkeys([Condition(), *(condition for condition, _ in labelled)]))
    rows = ablation.heldout_loss(model, tokenizer, texts, unique, batch_size=batch_size, max_length=max_length,
                                 progress=progress)
    return rows.assign(domain=np.asarray(domains, dtype=object)[rows["item"].to_numpy()])


def summarize_studies(rows: pd.DataFrame, labelled: Sequence[tuple[Condition, dict]], *, seed: int = 0,
                      n_boot: int = 1000) -> pd.DataFrame:
    """Return per label and domain (each domain, then ``"all"`` pooled) the loss in nats per
    token with its bootstrap interval and its paired difference from the baseline.

    Columns: :data:`LABELS`, ``domain``, ``condition``, ``n_items``, ``loss``, ``lo``, ``hi``,
    ``delta``, ``delta_lo``, ``delta_hi``; the baseline is the row with study ``"baseline"``.
    """
    per_domain = ablation.summarize_loss(rows, by=("domain",), seed=seed, n_boot=n_boot)
    pooled = ablation.summarize_loss(rows, by=(), seed=seed, n_boot=n_boot).assign(domain="all")
    summary = pd.concat([per_domain, pooled], ignore_index=True)
    labels = pd.DataFrame([{"condition": condition.name, **labels} for condition, labels in
                           [_label(Condition(), study="baseline"), *labelled]])
    keep = ["domain", "condition", "n_items", "loss", "lo", "hi", "delta", "delta_lo", "delta_hi"]
    table = labels.merge(summary[keep], on="condition", how="left")
    return table[[*LABELS, *keep]]


def random_band(curves: pd.DataFrame, level: float = 0.9) -> pd.DataFrame:
    """Return per domain and n the random draws' mean loss increase and its central ``level``
    range over draws (``delta_mean``, ``delta_lo``, ``delta_hi``, ``n_draws``)."""
    draws = curves[(curves["study"] == "curve") & (curves["curve"] == "random")]
    alpha = (1 - level) / 2
    grouped = draws.groupby(["domain", "n_removed"])["delta"]
    return pd.DataFrame({
        "delta_mean": grouped.mean(), "delta_lo": grouped.quantile(alpha), "delta_hi": grouped.quantile(1 - alpha),
        "n_draws": grouped.size(),
    }).reset_index()
