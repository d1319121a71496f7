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


def study_conditions(loaded, scores: xr.Dataset, scoring_domains, seed: int = 0) -> list:
    """Return the labelled conditions of the three studies for a model and its scores:
    n = 1 .. E/2 removed in every layer (each criterion, :data:`N_DRAWS` random draws),
    each domain keeping its E/2 most used experts, and k' = 1 .. k - 1 experts per token."""
    from moe_lib.models.families import family_of, top_k

    reroute = pruning_curves.can_reroute(family_of(loaded.config).scoring)
    n_experts = scores.sizes["expert"]
    labelled = pruning_curves.curve_conditions(scores, range(1, n_experts // 2 + 1), n_draws=N_DRAWS, seed=seed,
                                               reroute=reroute)
    usage = pruning_curves.domain_usage(scores, scoring_domains)
    labelled += pruning_curves.keep_conditions(usage, n_experts - n_experts // 2, reroute=reroute)
    return labelled + pruning_curves.topk_conditions(top_k(loaded.config))


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
        labelled = study_conditions(loaded, scores, scoring[1]["domain"], seed)
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
    pair by their common key; where a model has several pairs, the one written last wins.
    Empty dict when nothing is cached."""
    from pathlib import Path

    from moe_lib.core.cache import list_stores
    from moe_lib.interventions.ablation import cached_results

    studies = cached_results(STUDIES_STORE)
    stores = list_stores()
    newest: dict[str, tuple[float, xr.Dataset, pd.DataFrame]] = {}
    for path, key in stores.loc[stores["name"] == SCORES_STORE, ["path", "key"]].itertuples(index=False):
        rows = studies[studies["cache_key"] == key].drop(columns="cache_key") if not studies.empty else studies
        ds = xr.open_zarr(path, consolidated=False).load()
        model, written = ds.attrs.get("model", ""), Path(path).stat().st_mtime
        if rows.empty or (models is not None and model not in models):
            continue
        if model not in newest or written > newest[model][0]:
            newest[model] = (written, ds, rows)
    parts: dict[str, list[pd.DataFrame]] = {}
    for _, ds, rows in newest.values():
        for name, table in tables_from(ds, rows).items():
            parts.setdefault(name, []).append(table)
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
