"""Each chapter's headline numbers for every training seed of a recipe (issue 12, items 6, 7, 13).

A recipe trained once says little: another seed may route differently. Each recipe is
trained at several seeds (``standard-default``, ``standard-default-seed1``, ...); a claim is
quoted per recipe as the mean and the range over its seeds, beside the baseline or control
that isolates it, computed by the same cached tables the chapters draw (same names and
parameters, so seed 0 shares the chapters' stores).

A claim here is one number per run and its baseline. The chapters keep their figures and
per-layer tables for seed 0; these numbers are what they say holds across seeds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from moe_lib.analysis import distribution, information, paths, saturation, specialization, token_controls
from moe_lib.site import tables as site_tables

SEEDS = (0, 1, 2)


def seed_runs(model: str, seeds=SEEDS) -> list[str]:
    """Return the runs of ``model``'s recipe at ``seeds`` that can be read: a committed
    record, or a finished run on disk. A model that is not one of the project's own recipes
    (a hub checkpoint) is its only run."""
    from moe_lib import site
    from moe_lib.training.probe_traces import model_name

    found = site.own_run(model)
    if found is None:
        return [model]
    recipe, preset, _, _ = found
    runs = []
    for seed in seeds:
        name = model_name(recipe, preset, seed)
        try:
            site.weights_sha256(name, train=False)
        except (site.MissingDataError, FileNotFoundError, KeyError):
            continue
        runs.append(name)
    return runs


@dataclass(frozen=True)
class Claim:
    """One headline number: its chapter, what it measures, and how one run gives it.

    measure(run) returns ``(value, baseline)``; baseline is the chance level, shuffle or
    ideal the value is read against (NaN where the number is itself net of a null).
    """

    key: str
    chapter: str
    text: str
    baseline: str
    measure: Callable[[str], tuple[float, float]]
    decimals: int = 2


def _one(name: str, run: str, fn, probe: str = "domains", **params) -> pd.DataFrame:
    from moe_lib import site

    return site.per_model(name, [run], fn, probe=probe, **params)


def _top1_weight(run):
    slots = _one("weight-by-slot", run, distribution.weight_by_slot)
    top = slots[slots.slot == 0]["median"]
    return float(top.median()), 1 / int(slots.slot.max() + 1)


def _worst_load(run):
    return float(_one("load-balance", run, distribution.load_balance).max_over_mean.max()), 1.0


def _router_entropy(run):
    entropy = _one("router-entropy", run, distribution.router_entropy)
    return float((entropy["median"] / entropy.max_entropy_bits).median()), 1.0


def _adjacent(run):
    adjacent = _one("consecutive-routing", run, distribution.consecutive_routing)
    return float(adjacent.p_same_top1.mean()), float(adjacent.p_same_top1_chance.mean())


def _saturation_at_one_percent(run):
    from moe_lib import site

    sat = site.per_model("saturation", [run], saturation.router_saturation, over_checkpoints=True)
    by_checkpoint = sat.groupby("checkpoint")[["topk_overlap", "topk_overlap_chance"]].mean()
    tokens = by_checkpoint.index.to_numpy(dtype=float)
    nearest = int(np.argmin(np.abs(np.log(tokens / (0.01 * tokens.max())))))
    return float(by_checkpoint.topk_overlap.iloc[nearest]), float(by_checkpoint.topk_overlap_chance.iloc[nearest])


def _bits(measure: str, probe: str = "contextual"):
    def excess(run):
        bits = _one("expert-information", run, information.expert_information, probe=probe)
        return float(bits[bits.measure == measure].excess.mean()), np.nan
    return excess


def _same_index(run):
    continuity = _one("expert-continuity", run, site_tables.continuity_of_targets, probe="contextual")
    every = continuity[continuity.tokens == "all tokens"]
    return float(every.p_same_index.mean()), float(every.p_same_index_chance.mean())


def _domain_tv(run):
    tv = _one("domain-tv-within-token", run, token_controls.domain_tv_within_token, n_permutations=100)
    return float(tv.tv_distance.mean()), float(tv.tv_within.mean())


def _vocabulary(kind: str, which: str):
    """The input token against ids shuffled over all occurrences; an output token against
    ids shuffled within the input token id (what input-token routing alone gives it)."""
    def share(run):
        if kind == "input token":
            table = _one("vocabulary-specialization", run, specialization.vocabulary_by_kind)
            summary, baseline = site_tables.vocabulary_summary(table), "specialization_shuffled"
        else:
            table = _one("output-tokens-within-input", run, token_controls.output_tokens_within_input)
            columns = ["specialization", "specialization_within"]
            summary, baseline = token_controls.occurrence_weighted(table, columns), "specialization_within"
        rows = summary[summary.token_kind == kind].sort_values("layer")
        row = rows.iloc[0] if which == "first" else rows.iloc[-1]
        return float(row.specialization), float(row[baseline])
    return share


def _layer_contrast(contrast: str, where: str, reference: str | None = None):
    """One MoE layer at a time (the ablation grid ``layers``): a contrast's loss change in the
    first layer, or its mean over the later ones, against another contrast of the same layers
    (NaN without one). The grid is run for a project model whose results are missing."""
    def delta(run):
        from moe_lib.core.cache import cache_dir

        table = _layer_contributions(_recipe_runs(run), str(cache_dir()))
        table = table[table["model"] == run]
        first = table.layer.min()
        rows = table[table.layer == first] if where == "first" else table[table.layer > first]
        mean = lambda name: float(rows[rows.contrast == name].delta.mean())  # noqa: E731
        return mean(contrast), (mean(reference) if reference else np.nan)
    return delta


def _recipe_runs(run: str) -> tuple[str, ...]:
    """Return every seed run of ``run``'s recipe (``run`` alone for other models)."""
    from moe_lib import site
    from moe_lib.training.probe_traces import model_name

    found = site.own_run(run)
    return tuple(seed_runs(model_name(found[0], found[1], 0))) if found else (run,)


@functools.lru_cache(maxsize=4)
def _layer_contributions(runs: tuple[str, ...], cache: str) -> pd.DataFrame:
    """The ``layers`` grid's contrasts of a recipe's runs, read once per page and cache
    folder: each claim asks for one run, and reading the grid stores is what costs."""
    from moe_lib.site import ablations as site_ablations

    grid = site_ablations.ablation_tables("heldout", list(runs), grid="layers")[0]
    table = site_ablations.layer_contributions(grid[grid["model"].isin(runs)])
    table["model"] = table["model"].astype(str)
    return table


def _full_route_entropy(run):
    windows = _one("path-windows", run, site_tables.path_windows_with_baseline)
    full = windows[(windows.first_layer == 0) & (windows.length == windows.length.max())]
    observed = full.kind == "observed"
    return float(full[observed].normalised_entropy.iloc[0]), float(full[~observed].normalised_entropy.mean())


def _route_cluster_ami(run):
    clusters = _one("route-clusters", run, site_tables.route_cluster_agreement, n_permutations=100)
    row = clusters[clusters.label == "domain"].iloc[0]
    return float(row.ami), float(row.ami_token_null)


def _meaning_from(predictor: str):
    def accuracy(run):
        nested = _one("meaning-prediction-nested", run, paths.meaning_prediction_nested, probe="contextual")
        row = nested[nested.predictor == predictor].iloc[0]
        return float(row.accuracy), float(row.accuracy_shuffled)
    return accuracy


@functools.lru_cache(maxsize=8)
def _importance_tables(run: str, cache: str) -> dict[str, pd.DataFrame]:
    """The importance chapter's tables of one run (``site.importance.tables_from``),
    computed where its final checkpoint is on disk and they are missing, else read from the
    cache; once per run and cache folder, since every importance claim reads the same run."""
    from moe_lib import site
    from moe_lib.site import importance

    tables = importance.importance_tables(run) or importance.cached_importance_tables([run])
    if not tables or not len(tables["scores"]):
        raise site.MissingDataError(f"no expert-importance results for {run}: run `python -m moe_lib build` "
                                    "where its weights are, and commit the stores")
    return tables


def _importance(column: str):
    """A number the importance chapter quotes (``site.importance.chapter_numbers``), against 0."""
    def number(run):
        from moe_lib.core.cache import cache_dir
        from moe_lib.site import importance

        return float(importance.chapter_numbers(_importance_tables(run, str(cache_dir()))).loc[run, column]), 0.0
    return number


def _pruned_by(criterion: str):
    """The loss change with the most experts the study removes per layer (E/2), ranked by
    ``criterion``, against the mean of the random draws removing as many."""
    def delta(run):
        from moe_lib.core.cache import cache_dir
        from moe_lib.site import importance

        tables = _importance_tables(run, str(cache_dir()))
        versus = importance.criterion_vs_random(tables["curves"], tables["random_band"])
        versus = versus[versus.criterion == criterion]
        last = versus[versus.n_removed == versus.n_removed.max()].iloc[0]
        return float(last.delta), float(last.random_mean)
    return delta


CLAIMS = (
    Claim("top1-weight", "routing-basics", "Median top-1 routing weight (median over layers)",
          "1/k (an even split)", _top1_weight),
    Claim("worst-load", "routing-basics", "Largest over mean expert load, worst layer",
          "1 (even load)", _worst_load),
    Claim("router-entropy", "routing-basics", "Median router entropy as a share of log2 E (median over layers)",
          "1 (a router that cannot tell experts apart)", _router_entropy),
    Claim("adjacent-top1", "routing-basics", "Adjacent tokens with the same top-1 expert (mean over layers)",
          "chance from the layers' loads", _adjacent),
    Claim("saturation-1pct", "training", "Top-k overlap with the final routing at 1 % of training (mean over layers)",
          "chance overlap", _saturation_at_one_percent),
    Claim("bits-token", "cross-layer", "I(E; token) net of its null, bits (mean over layers)",
          "net of tokens shuffled", _bits("I(E; T)"), 3),
    Claim("bits-meaning", "cross-layer", "I(E; meaning | token), each sample traced alone, net of its null, bits",
          "net of meanings shuffled within token", _bits("I(E; M | T)"), 3),
    Claim("bits-source", "cross-layer", "I(E; source | token), each sample traced alone, net of its null, bits",
          "net of sources shuffled within token", _bits("I(E; S | T)"), 3),
    Claim("bits-meaning-within-source", "cross-layer",
          "I(E; meaning | token, source), each sample traced alone, net of its null, bits",
          "net of meanings shuffled within token and source", _bits("I(E; M | T, S)"), 3),
    Claim("bits-meaning-in-document", "cross-layer", "I(E; meaning | token), each sample after its document's "
          "preceding text, net of its null, bits", "net of meanings shuffled within token",
          _bits("I(E; M | T)", "in-document"), 3),
    Claim("bits-source-in-document", "cross-layer", "I(E; source | token), each sample after its document's "
          "preceding text, net of its null, bits", "net of sources shuffled within token",
          _bits("I(E; S | T)", "in-document"), 3),
    Claim("bits-meaning-within-source-in-document", "cross-layer", "I(E; meaning | token, source), each sample "
          "after its document's preceding text, net of its null, bits",
          "net of meanings shuffled within token and source", _bits("I(E; M | T, S)", "in-document"), 3),
    Claim("bits-meaning-other-document", "cross-layer", "I(E; meaning | token), each sample after as many tokens "
          "of other documents' text (the position control), net of its null, bits",
          "net of meanings shuffled within token", _bits("I(E; M | T)", "in-other-document"), 3),
    Claim("bits-source-other-document", "cross-layer", "I(E; source | token), each sample after as many tokens "
          "of other documents' text (the position control), net of its null, bits",
          "net of sources shuffled within token", _bits("I(E; S | T)", "in-other-document"), 3),
    Claim("same-index", "cross-layer", "Same top-1 expert index in consecutive layers (an architecture property)",
          "chance from the layers' loads", _same_index),
    Claim("full-route-entropy", "paths", "Normalised entropy of the full route (top-1 expert in every MoE layer)",
          "each layer's experts shuffled across tokens", _full_route_entropy),
    Claim("route-cluster-domain", "paths", "Route clusters' agreement with the domain (AMI)",
          "domains shuffled within token id", _route_cluster_ami, 3),
    Claim("meaning-from-path", "paths", "Meaning of a polysemantic occurrence predicted from its path "
          "(accuracy, nested cross-validation)", "meanings shuffled within token", _meaning_from("path")),
    Claim("meaning-from-layer", "paths", "The same from the best single layer's expert (nested)",
          "meanings shuffled within token", _meaning_from("single layer")),
    Claim("top1-first-layer", "ablations", "Top-1 expert removed in the first MoE layer alone, loss change "
          "(nats/token)", "the weight-matched control (same weight removed, no expert)",
          _layer_contrast("top-1 removed", "first", "weight-matched (control)"), 3),
    Claim("top1-later-layers", "ablations", "Top-1 expert removed in one later MoE layer alone, loss change "
          "(nats/token, mean over those layers)", "the weight-matched control",
          _layer_contrast("top-1 removed", "later", "weight-matched (control)"), 3),
    Claim("rerouting-first-layer", "ablations", "What re-routing in later layers adds to the first layer's "
          "top-1 removal (nats/token)", "the removal with later routes held: its cost is the rest",
          _layer_contrast("re-routing downstream", "first", "top-1 removed, later routes held"), 3),
    Claim("rho-frequency", "importance", "Spearman's rho of expert frequency with the causal score (median over "
          "layers)", "0 (no agreement)", _importance("rho_frequency")),
    Claim("rho-reap", "importance", "Spearman's rho of REAP with the causal score (median over layers)",
          "0 (no agreement)", _importance("rho_reap")),
    Claim("prune-half-reap", "importance", "Half of every layer's experts pruned by REAP, loss change "
          "(nats/token)", "the same number of random experts (mean of the draws)", _pruned_by("reap"), 3),
    Claim("prune-half-causal", "importance", "Half of every layer's experts pruned by the causal score, loss "
          "change (nats/token)", "the same number of random experts (mean of the draws)", _pruned_by("causal"), 3),
    Claim("top-k-one", "importance", "One route per token instead of k, loss change (nats/token)",
          "0 (the model's own k routes)", _importance("topk_delta"), 3),
    Claim("domain-tv", "specialization", "Domain specialization: total variation between domains' expert shares",
          "domain labels shuffled within token id", _domain_tv),
    Claim("input-token-first", "specialization", "Input-token specialization, first MoE layer",
          "token ids shuffled", _vocabulary("input token", "first")),
    Claim("input-token-last", "specialization", "Input-token specialization, last MoE layer",
          "token ids shuffled", _vocabulary("input token", "last")),
    Claim("predicted-token-first", "specialization", "Predicted-next-token specialization, first MoE layer",
          "ids shuffled within input token id", _vocabulary("predicted next token", "first")),
    Claim("predicted-token-last", "specialization", "Predicted-next-token specialization, last MoE layer",
          "ids shuffled within input token id", _vocabulary("predicted next token", "last")),
)


# What published work reports for the same measure on a pretrained MoE, and the caveat a
# reader needs beside our number; the overview's findings table shows them.
PUBLISHED = {
    "adjacent-top1": "Mixtral 8x7B: first-choice repeats well above the 12.5 % of random assignment "
                     "at layers 15 and 31 (Jiang et al. 2024)",
    "saturation-1pct": "OLMoE-1B-7B: about 60 % at 1 % of pretraining (Muennighoff et al. 2024)",
    "domain-tv": "OLMoE-1B-7B: strong for arXiv and GitHub, weak for general web text (Muennighoff et al. 2024)",
    "input-token-last": "OLMoE-1B-7B: input-token specialization falls in later layers (Muennighoff et al. 2024)",
    "predicted-token-last": "OLMoE-1B-7B: predicted-token specialization rises in later layers "
                            "(Muennighoff et al. 2024)",
}
CAVEATS = {
    "top1-weight": "our routers renormalise the top-k weights; OLMoE's do not",
    "worst-load": "set by the recipe (balance loss 0.1): the weak-balance control run is less even",
    "router-entropy": "set by the recipe (z-loss, balance 0.1): the control run's routers are surer",
    "adjacent-top1": "repeated tokens in a row count as sharing",
    "saturation-1pct": "our 1 % is a few hundred thousand tokens, OLMoE's about 50 B",
    "bits-meaning": "meaning is largely confounded with source in the probe",
    "bits-meaning-within-source": "only tokens with two meanings in one corpus source contribute",
    "bits-meaning-in-document": "at least 64 tokens of the document before the target, fewer only where the "
                                "document starts closer",
    "bits-meaning-within-source-in-document": "only tokens with two meanings in one corpus source contribute",
    "bits-meaning-other-document": "the text before comes from another corpus source, cut so that the target "
                                   "keeps the index it has in its own document",
    "same-index": "the cross-layer model's shared router ties indices by design",
    "top1-first-layer": "held-out text of our own corpus; a toy model of 4 MoE layers",
    "rerouting-first-layer": "later layers held at the baseline's expert ids and weights; the residual stream "
                             "still changes",
    "rho-reap": "rho over a layer's few experts (16 in the default models), on 36 scoring documents: wide "
                "intervals",
    "prune-half-reap": "ranked on one half of the held-out sample, measured on the other",
    "top-k-one": "renormalised to the sum of the k weights; no fine-tuning after",
    "domain-tv": "our domains are whole genres (code, Bible, dictionary), easier to tell apart than web text; "
                 "most of the distance is the domains' vocabulary (the baseline)",
}


def per_run(models, chapter: str | None = None, seeds=SEEDS) -> pd.DataFrame:
    """Return one row per claim and run: recipe (the model as the chapter names it), run,
    claim, value, baseline. ``chapter`` keeps that chapter's claims; the training claim is
    skipped for models without checkpoints."""
    from moe_lib import site

    rows = []
    for model in [models] if isinstance(models, str) else models:
        for run in seed_runs(model, seeds):
            for claim in CLAIMS:
                if chapter not in (None, claim.chapter):
                    continue
                if claim.chapter == "training" and not site.with_checkpoints([run]):
                    continue
                value, baseline = claim.measure(run)
                rows.append({"recipe": model, "run": run, "claim": claim.key, "value": value, "baseline": baseline})
    table = pd.DataFrame(rows, columns=["recipe", "run", "claim", "value", "baseline"])
    table["recipe"] = pd.Categorical(table["recipe"], categories=list(dict.fromkeys(table["recipe"])), ordered=True)
    return table


def spread(table: pd.DataFrame) -> pd.DataFrame:
    """Return per claim and recipe the mean, min and max over seeds of the value and the
    mean baseline, with the claim's text and the number of seeds, in CLAIMS' order."""
    grouped = table.groupby(["claim", "recipe"], sort=False, observed=True)
    out = grouped["value"].agg(mean="mean", lo="min", hi="max").join(
        grouped["baseline"].mean().rename("baseline_value")).join(grouped.size().rename("n_seeds")).reset_index()
    info = pd.DataFrame([{"claim": c.key, "text": c.text, "baseline": c.baseline, "chapter": c.chapter,
                          "heading": f"{c.text} (baseline: {c.baseline})", "published": PUBLISHED.get(c.key, ""),
                          "caveat": CAVEATS.get(c.key, ""), "order": i} for i, c in enumerate(CLAIMS)])
    out = out.merge(info, on="claim").sort_values(["order", "recipe"], kind="stable").drop(columns="order")
    return out.reset_index(drop=True)


def across_seeds(models, chapter: str | None = None, seeds=SEEDS) -> pd.DataFrame:
    """Return :func:`spread` of :func:`per_run`: what a chapter says holds across seeds."""
    return spread(per_run(models, chapter, seeds))


def findings(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the overview's findings table from :func:`per_run` rows: one row per claim, a
    ``mean [lo, hi] (n seeds)`` text column per model (its recipe's seeds), the baseline's
    mean over every run, the published figure and the caveat."""
    from moe_lib.site.prose import interval

    table = spread(runs)
    recipes = list(dict.fromkeys(table["recipe"].astype(str)))
    rows = []
    for claim in CLAIMS:
        part = table[table.claim == claim.key]
        if part.empty:
            continue
        row = {"claim": claim.text, "chapter": claim.chapter, "baseline": claim.baseline,
               "baseline_value": float(part.baseline_value.mean()),
               "published": PUBLISHED.get(claim.key, ""), "caveat": CAVEATS.get(claim.key, "")}
        for _, r in part.iterrows():
            row[str(r.recipe)] = f"{interval(r['mean'], r.lo, r.hi, claim.decimals)} ({r.n_seeds})"
        rows.append(row)
    return pd.DataFrame(rows, columns=["claim", "chapter", *recipes, "baseline", "baseline_value",
                                       "published", "caveat"])
