"""The data of the chapter "Which experts matter", for a project model: every table, cached.

:func:`importance_tables` loads a project model's final checkpoint (as the ablations
chapter does, :func:`moe_lib.site.ablations.run_own`), draws a seeded held-out sample
(:func:`moe_lib.interventions.ablation_runs.heldout_items`) and splits each domain's
documents alternately into two disjoint halves:

- the scoring half: every expert's observational and causal scores and their agreement
  (:func:`moe_lib.interventions.importance.expert_importance`), and each domain's expert
  usage;
- the evaluation half: the pruning curves ranked by those scores against random removal,
  per-domain keep-only, and fewer experts per token
  (:mod:`moe_lib.interventions.pruning_curves`). Ranking and measuring on different
  documents keeps a criterion from being judged on the documents that chose it.

Cost. The default models (4 MoE layers x 16 experts, top-2) run about 100 forward-
equivalents per scoring document (128 single-expert removals, most reusing the layers
below) and about 200 per evaluation document (4 criteria x 8 n + 20 random draws x 8 n,
6 keep-only, 1 top-k). At about 6,000 tokens per second on one CPU core, :data:`N_DOCS` = 6
documents per domain and half (6 domains: 36 + 36 documents of up to 256 tokens) keep a
model under 10 minutes; the intervals are wide accordingly, and say so.

Both stores are keyed by the model's identity (the sha256 of its weights), the two
halves' fingerprints and the settings; :func:`cached_importance_tables` reads them back
without any weights, for a fresh clone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.interventions import pruning_curves
from moe_lib.interventions.importance import IMPORTANCE_VERSION

N_DOCS = 6  # held-out documents per domain in each half: see the module docstring
MAX_LENGTH = 256  # tokens per document, as the ablations chapter's held-out grid
N_DRAWS = 20  # random removals per n
# criterion -> its name on the page
CRITERION_NAMES = {"frequency": "frequency", "weight": "mean weight", "reap": "REAP", "causal": "causal"}
SCORES_STORE = "expert-importance"
STUDIES_STORE = "pruning-heldout"


def split_halves(texts: list[str], labels: dict) -> tuple[tuple[list[str], dict], tuple[list[str], dict]]:
    """Return ``(scoring, evaluation)`` halves of a sample: within each domain, documents
    alternate between them (the first to scoring), each half with its labels."""
    position = pd.Series(labels["domain"]).groupby(labels["domain"]).cumcount().to_numpy()
    halves = []
    for parity in (0, 1):
        index = np.flatnonzero(position % 2 == parity)
        halves.append(([texts[i] for i in index], {name: [values[i] for i in index] for name, values in labels.items()}))
    return halves[0], halves[1]


def _identity(loaded, model: str, scoring, evaluation, seed: int) -> dict:
    from moe_lib.core.cache import fingerprint
    from moe_lib.models.registry import model_identity

    return {**model_identity(loaded, name=model), "dtype": str(next(loaded.parameters()).dtype).removeprefix("torch."),
            "scoring": fingerprint(*scoring), "evaluation": fingerprint(*evaluation), "max_length": MAX_LENGTH,
            "n_draws": N_DRAWS, "seed": seed, "importance_version": IMPORTANCE_VERSION}


def importance_tables(model: str, *, n_docs: int = N_DOCS, seed: int = 0, progress: bool = False
                      ) -> dict[str, pd.DataFrame] | None:
    """Return every table of the chapter for a project model (see :func:`tables_from`), from
    the cache, computing and storing what is missing; None without a final checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import moe_lib.models.cross_layer  # noqa: F401  registers moe_crosslayer with AutoModel
    from moe_lib import site
    from moe_lib.core.cache import cache_key, cached_dataset, cached_table
    from moe_lib.interventions.ablation_runs import heldout_items, large_blocks_by_mmap
    from moe_lib.interventions.importance import expert_importance
    from moe_lib.models.checkpoints import load_model
    from moe_lib.models.registry import PROJECT_ROOT
    from moe_lib.site.ablations import final_checkpoint

    path = final_checkpoint(model)
    if path is None:
        return None
    large_blocks_by_mmap()
    loaded = load_model(path, AutoModelForCausalLM).eval()
    tokenizer = AutoTokenizer.from_pretrained(PROJECT_ROOT / "datasets" / "tokenizer")
    texts, labels = heldout_items(site.corpus_dir() / "validation.jsonl", n_docs=2 * n_docs, seed=seed)
    scoring, evaluation = split_halves(texts, labels)
    identity = _identity(loaded, model, scoring, evaluation, seed)

    def scores_of_model() -> xr.Dataset:
        ds = expert_importance(loaded, tokenizer, scoring[0], max_length=MAX_LENGTH, seed=seed, progress=progress)
        return ds.assign_coords(domain=("doc", np.asarray(scoring[1]["domain"], dtype=object))).assign_attrs(
            model=model)

    scores = cached_dataset(SCORES_STORE, identity, scores_of_model)

    def studies_of_model() -> pd.DataFrame:
        labelled = pruning_curves.study_conditions(loaded.config, scores, scoring[1]["domain"], n_draws=N_DRAWS,
                                                   seed=seed)
        rows = pruning_curves.run_studies(loaded, tokenizer, evaluation[0], evaluation[1]["domain"], labelled,
                                          max_length=MAX_LENGTH, progress=progress)
        return pruning_curves.summarize_studies(rows, labelled, seed=seed).assign(model=model)

    studies = cached_table(STUDIES_STORE, identity, studies_of_model)
    for name in (SCORES_STORE, STUDIES_STORE):
        site.record_read({"cache_name": name, "cache_key": cache_key(identity), "model": model}, kind="importance")
    return tables_from(scores, studies)


def tables_from(scores: xr.Dataset, studies: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Return the chapter's tidy tables from a model's importance Dataset and study rows.

    - ``scores``: per layer and expert, ``n_routed``, ``frequency``, ``mean_weight``,
      ``reap`` and ``loss_increase`` (nats per token; ``renormalize`` False and True as
      rows), each with ``_lo`` / ``_hi``;
    - ``agreement``: per layer, criterion and ``renormalize``, Spearman's ``rho`` with ``lo``, ``hi``;
    - ``curves``: per ``curve`` (criterion or ``random``, with ``draw``), ``n_removed`` and
      ``domain`` (``all`` pooled), the loss with its interval and its difference from the
      baseline (``n_removed`` 0);
    - ``random_band``: per domain and n, the random draws' mean difference and 90 % range;
    - ``keep``: per ``kept_for`` domain and measured ``domain``, ``same_domain``, the loss;
    - ``top_k``: per ``top_k`` (k' = k is the baseline) and domain, the loss.
    Every table has a ``model`` column.
    """
    model = scores.attrs.get("model", "")
    per_expert = [f"{v}{s}" for v in ("frequency", "mean_weight", "reap") for s in ("", "_lo", "_hi")]
    observed = scores[["n_routed", *per_expert]].to_dataframe().reset_index()
    causal = scores[["loss_increase", "loss_increase_lo", "loss_increase_hi"]].to_dataframe().reset_index()
    table_scores = causal.merge(observed, on=["layer", "expert"]).assign(model=model)
    agreement = scores[["spearman", "spearman_lo", "spearman_hi"]].to_dataframe().reset_index().rename(
        columns={"spearman": "rho", "spearman_lo": "lo", "spearman_hi": "hi"}).assign(model=model)
    curves = studies[studies["study"].isin(["baseline", "curve"])].reset_index(drop=True)
    keep = studies[studies["study"] == "keep"].reset_index(drop=True)
    keep = keep.assign(same_domain=keep["kept_for"] == keep["domain"])
    k = int(scores.attrs.get("top_k", 0))
    top = studies[studies["study"].isin(["baseline", "top_k"])].copy()
    top.loc[top["study"] == "baseline", "top_k"] = k
    return {"scores": table_scores, "agreement": agreement, "curves": curves,
            "random_band": pruning_curves.random_band(curves).assign(model=model), "keep": keep,
            "top_k": top.reset_index(drop=True)}


def cached_importance_tables(models: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Return :func:`tables_from` for every model whose importance stores are cached (only
    ``models`` if given), concatenated, read without weights. A model's scores and studies
    pair by their common key; a project model's stores count only when made from its
    current weights (run folder, else committed record); where a model has several pairs,
    the one written last wins.
    Empty dict when nothing is cached."""
    from pathlib import Path

    from moe_lib import site
    from moe_lib.core.cache import list_stores
    from moe_lib.interventions.ablation import cached_results

    from moe_lib.site.ablations import project_weights, store_weights

    studies = cached_results(STUDIES_STORE)
    stores = list_stores()
    newest: dict[str, tuple[float, xr.Dataset, pd.DataFrame]] = {}
    for path, key in stores.loc[stores["name"] == SCORES_STORE, ["path", "key"]].itertuples(index=False):
        rows = studies[studies["cache_key"] == key].drop(columns="cache_key") if not studies.empty else studies
        ds = xr.open_zarr(path, consolidated=False).load()
        model, written = ds.attrs.get("model", ""), Path(path).stat().st_mtime
        if rows.empty or (models is not None and model not in models):
            continue
        # a project model's stores made from other weights (an earlier or another run) are not its own
        weights = project_weights([model]).get(model)
        if weights is not None and store_weights(path) != weights:
            continue
        if model not in newest or written > newest[model][0]:
            newest[model] = (written, ds, rows)
    parts: dict[str, list[pd.DataFrame]] = {}
    for _, ds, rows in newest.values():
        key = ds.attrs.get("cache_key", "")
        for name in (SCORES_STORE, STUDIES_STORE):
            site.record_read({"cache_name": name, "cache_key": key, "model": ds.attrs.get("model", "")},
                             kind="importance")
        for name, table in tables_from(ds, rows).items():
            parts.setdefault(name, []).append(table)
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


# -- the chapter: every model with results, then its summaries (pure functions of the tables) --
def cached_score_models() -> set[str]:
    """Return the models with an importance store in the cache (read from its listing)."""
    from moe_lib.core.cache import list_stores

    stores = list_stores()
    return set(stores.loc[stores["name"] == SCORES_STORE, "model"]) - {""} if not stores.empty else set()


def other_models_shown(models: list[str], cached: set[str]) -> list[str]:
    """Return the models of ``cached`` (with importance stores) the chapter shows beside
    ``models``, by name: a hub checkpoint the importance command scored, but neither a tiny
    test preset nor another seed of a project recipe, whose numbers the across-seeds
    table gives (:mod:`moe_lib.site.seeds`)."""
    from moe_lib import site

    def seed(model):
        found = site.own_run(model)
        return found[2] if found else 0

    return sorted(m for m in cached - set(models) if not m.endswith("-tiny") and seed(m) == 0)


def chapter_tables(models: list[str]) -> dict[str, pd.DataFrame]:
    """Return :func:`tables_from` for every model of ``models`` with results, and the other
    models :func:`other_models_shown` picks, plus ``experts``: each expert's most frequent
    input tokens and domain mix (:func:`moe_lib.site.explorer.expert_table` of the domains
    probe, cached per model).

    A project model of ``models`` whose final checkpoint is on disk is computed where
    missing (:func:`importance_tables`); every other model is read from the cache. Every
    table's ``model`` column is categorical, in the order of ``models``, then the others by
    name. Raises :class:`moe_lib.site.MissingDataError` when no model has results.
    """
    from moe_lib import site
    from moe_lib.site import explorer_page

    wanted = list(models)
    computed = {m: importance_tables(m) for m in wanted if site.own_recipe(m) is not None}
    frames = [t for t in computed.values() if t is not None]
    ran = [m for m, t in computed.items() if t is not None]
    scored = cached_score_models()
    shown = [m for m in wanted if m in scored and m not in ran] + other_models_shown(wanted, scored)
    cached = cached_importance_tables(shown) if shown else {}
    if cached:
        frames.append(cached)
    if not any(len(t["scores"]) for t in frames):
        raise site.MissingDataError(
            f"no expert-importance results for {', '.join(wanted)}, and no final checkpoint to compute them from: "
            "run `python -m moe_lib build` (it computes them for the project's models) and commit the "
            f"{SCORES_STORE} and {STUDIES_STORE} stores")
    tables = {name: pd.concat([t[name] for t in frames], ignore_index=True) for name in frames[0]}
    present = set(tables["scores"]["model"])
    order = [m for m in wanted if m in present] + sorted(present - set(wanted))
    traced = [m for m in order if m in models or site.own_recipe(m) is not None]
    tables["experts"] = explorer_page.expert_tables(traced) if traced else pd.DataFrame(
        columns=["model", "layer", "expert", "top_tokens", "domains"])
    for table in tables.values():
        table["model"] = pd.Categorical(table["model"].astype(str), categories=order, ordered=True)
    return tables


def agreement_wide(agreement: pd.DataFrame) -> pd.DataFrame:
    """Return one row per model, layer and causal score (``removal``: "dropped" or
    "renormalised") with Spearman's rho and its interval per criterion as columns
    ``rho_<criterion>``, ``lo_<criterion>``, ``hi_<criterion>``."""
    table = agreement.assign(removal=np.where(agreement["renormalize"], "renormalised", "dropped"))
    wide = table.pivot_table(index=["model", "layer", "removal"], columns="criterion", values=["rho", "lo", "hi"],
                             observed=True, dropna=False)
    wide.columns = [f"{value}_{criterion}" for value, criterion in wide.columns]
    return wide.reset_index().dropna(subset=[c for c in wide.columns if c.startswith("rho_")], how="all")


def agreement_summary(agreement: pd.DataFrame) -> pd.DataFrame:
    """Return per model, criterion and causal score (``renormalize``) the median of rho over
    layers, the number of layers, and how many layers have an interval above or below 0."""
    grouped = agreement.groupby(["model", "criterion", "renormalize"], observed=True)
    return pd.DataFrame({
        "median_rho": grouped["rho"].median(), "n_layers": grouped["rho"].size(),
        "n_above": grouped["lo"].agg(lambda lo: int((lo > 0).sum())),
        "n_below": grouped["hi"].agg(lambda hi: int((hi < 0).sum())),
    }).reset_index()


def criterion_vs_random(curves: pd.DataFrame, band: pd.DataFrame, domain: str = "all") -> pd.DataFrame:
    """Return per model, criterion and n removed the loss increase with its interval beside
    the random draws' mean and 90 % range at the same n, on ``domain``; ``below`` /
    ``above`` say whether the criterion's loss increase lies under / over that range."""
    chosen = curves[(curves["study"] == "curve") & (curves["curve"] != "random") & (curves["domain"] == domain)]
    random = band[band["domain"] == domain].rename(columns={"delta_mean": "random_mean", "delta_lo": "random_lo",
                                                            "delta_hi": "random_hi"})
    table = chosen[["model", "curve", "n_removed", "delta", "delta_lo", "delta_hi"]].rename(
        columns={"curve": "criterion"}).merge(random.drop(columns="domain"), on=["model", "n_removed"])
    return table.assign(below=table["delta"] < table["random_lo"], above=table["delta"] > table["random_hi"])


def pruning_summary(versus: pd.DataFrame) -> pd.DataFrame:
    """Return per model, from :func:`criterion_vs_random`: the largest n removed, the
    criterion with the smallest loss increase there and that increase, the random mean
    there, and how many (criterion, n) points lie below / above the random range."""
    rows = []
    for model, part in versus.groupby("model", observed=True):
        last = part[part["n_removed"] == part["n_removed"].max()]
        best = last.loc[last["delta"].idxmin()]
        rows.append({"model": model, "n_removed": int(best["n_removed"]), "best": best["criterion"],
                     "best_delta": best["delta"], "random_mean": best["random_mean"], "n_points": len(part),
                     "n_below": int(part["below"].sum()), "n_above": int(part["above"].sum())})
    return pd.DataFrame(rows)


def keep_summary(keep: pd.DataFrame, band: pd.DataFrame) -> pd.DataFrame:
    """Return per model and measured domain the loss increase when every layer keeps the
    experts of that domain (``own``, with its interval), the mean, lowest and highest when
    it keeps another domain's (``other``), and the random draws removing as many experts
    (``random``: mean and 90 % range): one row per model, domain and ``kept`` ("own domain's",
    "another domain's", "random")."""
    measured = keep[keep["domain"] != "all"]
    own = measured[measured["same_domain"]].assign(kept="own domain's")
    others = measured[~measured["same_domain"]].groupby(["model", "domain", "n_removed"], observed=True)["delta"]
    other = others.agg(["mean", "min", "max"]).reset_index().rename(
        columns={"mean": "delta", "min": "delta_lo", "max": "delta_hi"}).assign(kept="another domain's")
    removed = measured[["model", "n_removed"]].drop_duplicates()
    random = band.merge(removed, on=["model", "n_removed"]).rename(columns={"delta_mean": "delta"})
    random = random[random["domain"] != "all"].assign(kept="random")
    columns = ["model", "domain", "kept", "delta", "delta_lo", "delta_hi"]
    return pd.concat([own[columns], other[columns], random[columns]], ignore_index=True)


def _top_domains(domains: str, n: int) -> str:
    """Return the ``n`` domains an expert's tokens over-represent most, relative to the
    probe, from the explorer's JSON ``[[domain, share_of_inputs, share_of_probe], ...]``:
    "code 45 % (17 %)", its share then the probe's."""
    import json

    rows = sorted(json.loads(domains), key=lambda r: -(r[1] / r[2] if r[2] else 0))[:n]
    return "; ".join(f"{d} {100 * s:.0f} % ({100 * p:.0f} %)" for d, s, p in rows)


def extreme_experts(scores: pd.DataFrame, experts: pd.DataFrame, n: int = 1, n_tokens: int = 4,
                    n_domains: int = 2) -> pd.DataFrame:
    """Return per model and layer its ``n`` most and ``n`` least important experts by the
    causal score (slot dropped, not renormalised), with their observational scores, their
    ``n_tokens`` most frequent input tokens (a tuple) and their ``n_domains`` most
    over-represented domains (:func:`_top_domains`), from :func:`tables_from`'s scores and
    :func:`moe_lib.site.explorer.expert_table` rows (top-1 assignments on the domains probe).
    Column ``which``: "most important" or "least important"; ``rank``: 0 = the most
    important of the layer."""
    import json

    causal = scores[~scores["renormalize"].astype(bool)].copy()
    causal["rank"] = causal.groupby(["model", "layer"], observed=True)["loss_increase"].rank(
        ascending=False, method="first").astype(int) - 1
    n_in_layer = causal.groupby(["model", "layer"], observed=True)["expert"].transform("size")
    picked = causal[(causal["rank"] < n) | (causal["rank"] >= n_in_layer - n)].copy()
    picked["which"] = np.where(picked["rank"] < n, "most important", "least important")
    about = experts[["model", "layer", "expert", "top_tokens", "domains"]].astype({"model": str})
    about = about.assign(tokens=about["top_tokens"].map(lambda t: tuple(r[0] for r in json.loads(t)[:n_tokens])),
                         top_domains=about["domains"].map(lambda d: _top_domains(d, n_domains)))
    picked = picked.astype({"model": str}).merge(about.drop(columns=["top_tokens", "domains"]),
                                                 on=["model", "layer", "expert"], how="left")
    picked["tokens"] = picked["tokens"].map(lambda v: v if isinstance(v, tuple) else ())
    picked["top_domains"] = picked["top_domains"].fillna("")
    if isinstance(scores["model"].dtype, pd.CategoricalDtype):
        picked["model"] = pd.Categorical(picked["model"], categories=scores["model"].cat.categories, ordered=True)
    return picked.sort_values(["model", "layer", "rank"]).reset_index(drop=True)


def card_importance(scores: pd.DataFrame) -> pd.DataFrame:
    """Return the importance line of each expert's card (:mod:`moe_lib.site.expert_cards`):
    per model, layer and expert, the held-out loss increase when it alone is removed (its
    slot dropped, weights not renormalised) with its 95 % interval, its rank in its layer
    by that increase (1 = the layer's most needed), and its REAP score."""
    from moe_lib.site.prose import interval

    dropped = scores[~scores["renormalize"].astype(bool)].copy()
    dropped["rank"] = dropped.groupby(["model", "layer"], observed=True)["loss_increase"].rank(
        ascending=False, method="min").astype(int)
    size = dropped.groupby(["model", "layer"], observed=True)["expert"].transform("size")
    return pd.DataFrame({
        "model": dropped["model"].astype(str), "layer": dropped["layer"], "expert": dropped["expert"],
        "loss when removed (nats/token)": [str(interval(v, lo, hi, 4, sign=True)) for v, lo, hi in zip(
            dropped["loss_increase"], dropped["loss_increase_lo"], dropped["loss_increase_hi"])],
        "rank in its layer": [f"{r} of {n}" for r, n in zip(dropped["rank"], size)],
        "REAP": dropped["reap"].astype(float),
    }).reset_index(drop=True)


def chapter_numbers(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Return one row per model (the index) of the numbers the chapter's prose quotes.

    Columns: ``n_layers``, ``n_experts`` (per layer), ``top_k``, ``n_docs`` (evaluation
    documents); ``rho_<criterion>`` and ``rho_<criterion>_renorm``, the median over layers
    of Spearman's rho with the causal score (slot dropped / renormalised); ``n_rho`` (layer
    x criterion pairs, dropped), how many of them have an interval above 0
    (``n_rho_above``) or below 0 (``n_rho_below``), and the median width of their
    intervals (``rho_width``); from :func:`pruning_summary`
    ``n_removed`` (the most experts removed per layer), ``best``, ``best_delta``,
    ``random_mean``, ``n_points``, ``n_below``, ``n_above``, and ``causal_delta``
    there; ``topk_delta`` with ``topk_lo`` and ``topk_hi`` (the smallest k', all domains);
    the mean over domains of the keep-only loss increase with a domain's own experts
    (``keep_own``), another's (``keep_other``) and random ones (``keep_random``), and how
    many domains lose less with their own experts than with random ones (``n_keep_better``
    of ``n_domains``); the largest single-expert loss increase (``max_increase``) and how
    many experts' interval reaches 0 or below (``n_harmless``, of ``n_scored``)."""
    scores = tables["scores"].astype({"model": str})
    dropped = scores[~scores["renormalize"].astype(bool)]
    by = dropped.groupby("model")
    out = pd.DataFrame({"n_layers": by["layer"].nunique(), "n_experts": by["expert"].nunique(),
                        "max_increase": by["loss_increase"].max(), "n_scored": by.size(),
                        "n_harmless": by["loss_increase_lo"].agg(lambda lo: int((lo <= 0).sum()))})
    curves = tables["curves"].astype({"model": str})
    base = curves[(curves["study"] == "baseline") & (curves["domain"] == "all")].set_index("model")
    out["n_docs"] = base["n_items"]
    agreement = agreement_summary(tables["agreement"].astype({"model": str}))
    for criterion in ("frequency", "weight", "reap"):
        for renormalize, suffix in ((False, ""), (True, "_renorm")):
            part = agreement[(agreement["criterion"] == criterion) & (agreement["renormalize"] == renormalize)]
            out[f"rho_{criterion}{suffix}"] = part.set_index("model")["median_rho"]
    dropped_rho = tables["agreement"].astype({"model": str}).query("~renormalize")
    out["rho_width"] = (dropped_rho["hi"] - dropped_rho["lo"]).groupby(dropped_rho["model"]).median()
    counts = agreement[~agreement["renormalize"].astype(bool)].groupby("model")
    out["n_rho"], out["n_rho_above"], out["n_rho_below"] = (counts["n_layers"].sum(), counts["n_above"].sum(),
                                                            counts["n_below"].sum())
    versus = criterion_vs_random(curves, tables["random_band"].astype({"model": str}))
    out = out.join(pruning_summary(versus).set_index("model"))
    out["best"] = out["best"].map(CRITERION_NAMES)
    last = versus[(versus["criterion"] == "causal") & (versus["n_removed"] == versus["model"].map(out["n_removed"]))]
    out["causal_delta"] = last.set_index("model")["delta"]
    top = tables["top_k"].astype({"model": str})
    top = top[(top["study"] == "top_k") & (top["domain"] == "all")]
    top = top[top["top_k"] == top.groupby("model")["top_k"].transform("min")].set_index("model")
    out["top_k"] = tables["top_k"].astype({"model": str}).query("study == 'baseline'").groupby("model")["top_k"].max()
    out["topk_kept"], out["topk_delta"], out["topk_lo"], out["topk_hi"] = (top["top_k"], top["delta"], top["delta_lo"],
                                                                           top["delta_hi"])
    keep = keep_summary(tables["keep"].astype({"model": str}), tables["random_band"].astype({"model": str}))
    wide = keep.pivot_table(index=["model", "domain"], columns="kept", values="delta")
    means = wide.groupby("model").mean()
    out["keep_own"], out["keep_other"], out["keep_random"] = (means["own domain's"], means["another domain's"],
                                                              means["random"])
    better = (wide["own domain's"] < wide["random"]).groupby("model")
    out["n_keep_better"], out["n_domains"] = better.sum().astype(int), better.size()
    order = tables["scores"]["model"]
    if isinstance(order.dtype, pd.CategoricalDtype):
        out = out.reindex([m for m in order.cat.categories if m in out.index])
        out.index = pd.CategoricalIndex(out.index, categories=list(out.index), ordered=True, name="model")
    return out


def words_per_model(values: pd.Series) -> str:
    """Return a text value per model in words, from a Series indexed by model: "REAP in
    both models", or "frequency in standard-default and REAP in cross-layer-default"."""
    from moe_lib.site import prose

    models = list(dict.fromkeys(values.index))
    names = [str(values[m]) for m in models]
    if len(models) > 1 and len(set(names)) == 1:
        return prose.Phrase(f"{names[0]} in {prose.all_of(len(models), 'models')}")
    return prose.Phrase(prose.join([f"{name} in {model}" for model, name in zip(models, names)]))
