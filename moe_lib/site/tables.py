"""The chapters' tables that combine analyses: tokens chosen by their text, not their id,
and polysemantic-token measures over every target of the contextual probe.

Token ids differ between tokenizers, so a chapter names a token by its string (``" bank"``)
and these functions find its id in each trace. Each function is a pure function of traces
(or of a table) and is passed to :func:`moe_lib.site.table`, which caches its result.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis import crosslayer, saturation
from moe_lib.analysis.shuffles import permute_within


def token_id_of(ds: xr.Dataset, token_str: str) -> int:
    """Return the id of the token spelt ``token_str`` in a trace (its most frequent id).

    Raises
    ------
    ValueError
        Naming the trace's model and the token when the trace never holds it.
    """
    strings = ds["token_str"].values
    ids = ds["token_id"].values[strings == token_str]
    if ids.size == 0:
        raise ValueError(f"trace of {ds.attrs.get('model')!r}: token {token_str!r} never occurs")
    values, counts = np.unique(ids, return_counts=True)
    return int(values[counts.argmax()])


def target_token_id(ds: xr.Dataset, target: str) -> int:
    """Return the token id of a contextual-probe target (e.g. ``" bank"``) in a trace.

    The target's occurrences are the ``is_target`` rows of samples labelled ``target``;
    a target that a tokenizer cuts into several tokens is represented by its most
    frequent piece.
    """
    mask = ds["is_target"].values & (ds["target"].values == target)
    ids = ds["token_id"].values[mask]
    if ids.size == 0:
        raise ValueError(f"trace of {ds.attrs.get('model')!r}: target {target!r} has no occurrences")
    values, counts = np.unique(ids, return_counts=True)
    return int(values[counts.argmax()])


def targets(ds: xr.Dataset) -> list[str]:
    """Return the contextual probe's targets present in a trace, sorted."""
    mask = ds["is_target"].values
    return sorted({str(t) for t in ds["target"].values[mask]})


def token_distribution(checkpoints: Mapping, token_strs: list[str], n_slots: int | None = 1) -> pd.DataFrame:
    """Return ``saturation.token_expert_distribution`` for tokens given by their text.

    The ids are looked up in the last checkpoint's trace (every checkpoint traces the same
    probe with the same tokenizer); a ``token`` column repeats each token's text.
    """
    last = list(checkpoints.values())[-1]
    ids = {token_id_of(last, s): s for s in token_strs}
    table = saturation.token_expert_distribution(checkpoints, list(ids), n_slots=n_slots)
    return table.assign(token=table["token_id"].map(ids))


def meaning_flow_of(ds: xr.Dataset, target: str) -> pd.DataFrame:
    """Return ``crosslayer.meaning_flow`` of one contextual target, with a ``target`` column."""
    flow = crosslayer.meaning_flow(_targets_only(ds, target), target_token_id(ds, target))
    return flow.assign(target=target)


def _targets_only(ds: xr.Dataset, target: str) -> xr.Dataset:
    """Return the trace rows of the samples of one target (its occurrences and their context)."""
    return ds.isel(token=np.flatnonzero(ds["target"].values == target))


def specialization_by_target(ds: xr.Dataset, n_permutations: int = 200, seed: int = 0) -> pd.DataFrame:
    """Return ``crosslayer.specialization_js`` for every target of the contextual probe.

    One row per target and layer (the columns of ``specialization_js`` and ``target``).
    The token-id baseline draws random tokens of the whole trace.
    """
    ds = ds.load()  # every target reads the whole trace once more; read it from disk once
    parts = []
    for t in targets(ds):
        # A fresh is_target per call: crosslayer.target_occurrences narrows its mask with &=
        # on the array it gets, which for a loaded trace is the coordinate itself.
        fresh = ds.assign_coords(is_target=ds["is_target"].copy(deep=True))
        table = crosslayer.specialization_js(fresh, target_token_id(ds, t), n_permutations=n_permutations, seed=seed)
        parts.append(table.assign(target=t))
    return pd.concat(parts, ignore_index=True)


def mean_over_targets(table: pd.DataFrame, by: tuple[str, ...] = ("model", "layer")) -> pd.DataFrame:
    """Return the mean of every numeric column of ``specialization_by_target`` rows over
    targets, per ``by`` group, with ``n_targets`` and the share of targets whose context
    specialization beats its shuffled baseline's 95th percentile."""
    by = [c for c in by if c in table.columns]
    numeric = [c for c in table.select_dtypes("number").columns if c not in by]
    grouped = table.groupby(by, observed=True)
    out = grouped[numeric].mean().reset_index()
    beats = (table["context_js"] > table["context_js_shuffled_q95"]).groupby(
        [table[c] for c in by], observed=True).mean().to_numpy()
    return out.assign(n_targets=grouped.size().to_numpy(), share_context_significant=beats)


def continuity_of_targets(ds: xr.Dataset, n_permutations: int = 5, seed: int = 0) -> pd.DataFrame:
    """Return ``crosslayer.expert_continuity`` over the targets' occurrences and over every
    token of the probe, told apart by a ``tokens`` column."""
    occurrences = crosslayer.target_occurrences(ds)
    return pd.concat(
        [
            crosslayer.expert_continuity(occurrences, n_permutations=n_permutations, seed=seed)
            .assign(tokens="polysemantic targets"),
            crosslayer.expert_continuity(ds, n_permutations=n_permutations, seed=seed).assign(tokens="all tokens"),
        ],
        ignore_index=True,
    )


def saturation_summary(table: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Return per model the saturation at its first checkpoint and when it reaches ``threshold``.

    Input: ``router_saturation`` rows of several models (a ``model`` column), checkpoints
    keyed by training tokens. Columns model, first_tokens, first_topk_overlap and
    first_top1_agreement (means over layers at the first checkpoint), chance (mean
    top-k chance level there), tokens_to_threshold (the first checkpoint whose mean top-k
    overlap over layers reaches ``threshold``), final_tokens.
    """
    rows = []
    for model, part in table.groupby("model", observed=True):
        by_checkpoint = part.groupby("checkpoint")[["topk_overlap", "top1_agreement", "topk_overlap_chance"]].mean()
        first = by_checkpoint.iloc[0]
        reached = by_checkpoint.index[by_checkpoint["topk_overlap"] >= threshold]
        rows.append({
            "model": model, "first_tokens": int(by_checkpoint.index[0]),
            "first_topk_overlap": first["topk_overlap"], "first_top1_agreement": first["top1_agreement"],
            "chance": first["topk_overlap_chance"],
            "tokens_to_threshold": int(reached[0]) if len(reached) else None,
            "final_tokens": int(by_checkpoint.index[-1]),
        })
    return pd.DataFrame(rows)


def parameter_counts(model: str) -> dict:
    """Return a project model's total and active parameter counts, built on the meta device.

    Active parameters are those one token uses: everything but the experts it is not
    routed to, i.e. the expert parameters scaled by top_k / n_experts.
    """
    import torch
    from transformers import AutoTokenizer

    from moe_lib import site
    from moe_lib.training.train import RECIPES

    recipe_name, _, recipe = site.own_recipe(model) or (None, None, None)
    if recipe is None:
        raise ValueError(f"model {model!r}: parameter counts need one of the project's recipes")
    tokenizer = AutoTokenizer.from_pretrained(site.PROJECT_ROOT / "datasets" / "tokenizer")
    special = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    with torch.device("meta"):
        built = RECIPES[recipe_name].build_model(recipe, len(tokenizer), special)
    total = sum(p.numel() for p in built.parameters())
    experts = sum(p.numel() for name, p in built.named_parameters() if ".experts." in name)
    return {"parameters": total, "active_parameters": round(total - experts * (1 - recipe.top_k / recipe.n_experts))}


def model_table(models: list[str]) -> pd.DataFrame:
    """Return one row per project model: shape, parameters, training tokens, validation loss.

    Columns model, layers, experts, top_k, hidden, parameters and active_parameters
    (millions), training_tokens, val_loss (final checkpoint, nats per token over every
    held-out domain), and the n-gram baselines of ``datasets/tokenizer/corpus_stats.json``
    (unigram and the better bigram, nats per token over the whole validation split).
    """
    import json

    from moe_lib import site

    stats = json.loads((site.PROJECT_ROOT / "datasets" / "tokenizer" / "corpus_stats.json").read_text())
    baselines = {row["model"]: row["nats_per_token"] for row in stats["ngram_baselines"] if row["domain"] == "all"}
    bigram = min(v for k, v in baselines.items() if k.startswith("bigram"))
    rows = []
    for model in site.with_checkpoints(models):
        _, _, recipe = site.own_recipe(model)
        metrics = site.training_metrics(model)
        final = metrics[(metrics["step"] == metrics["step"].max()) & (metrics["domain"] == "all")]
        counts = parameter_counts(model)
        rows.append({
            "model": model, "layers": recipe.n_layers, "experts": recipe.n_experts, "top_k": recipe.top_k,
            "hidden": recipe.hidden_size, "parameters_M": counts["parameters"] / 1e6,
            "active_parameters_M": counts["active_parameters"] / 1e6, "training_tokens": recipe.n_tokens,
            "val_loss": float(final["val_loss"].iloc[0]), "unigram_loss": baselines["unigram"],
            "bigram_loss": bigram,
        })
    return pd.DataFrame(rows)


def family_table() -> pd.DataFrame:
    """Return the pretrained families moe_lib captures: family, scoring rule, registered models."""
    from moe_lib.models.families import FAMILIES, SCORING_RULES
    from moe_lib.models.registry import REGISTRY

    rows = []
    for name, family in FAMILIES.items():
        registered = [spec.name for spec in REGISTRY.values() if spec.family == name and "/" in spec.source
                      and not spec.source.startswith("datasets/")]
        rows.append({"family": name, "scoring": SCORING_RULES[family.scoring],
                     "shared experts": family.shared_experts is not None, "registered models": ", ".join(registered)})
    return pd.DataFrame(rows)


# Routing paths and expert specialization (chapters/paths.qmd, chapters/specialization.qmd).
# The analysis modules are imported inside each function: route_clusters pulls in
# scikit-learn, and the chapters above need none of them.


def _target_rows(ds: xr.Dataset) -> xr.Dataset:
    """Return the rows of a contextual trace that are target occurrences."""
    if "is_target" not in ds.coords:
        raise KeyError(f"trace of {ds.attrs.get('model')!r} has no token label 'is_target' (use the contextual probe)")
    return ds.isel(token=np.flatnonzero(np.asarray(ds["is_target"].values, bool)))


def path_groups_table(ds: xr.Dataset, targets_only: bool = False, min_tokens: int = 20, max_groups: int = 30,
                      n_examples: int = 2, n_shuffles: int = 5, seed: int = 0) -> pd.DataFrame:
    """Return ``paths.path_groups`` over every layer, its example contexts joined into one string.

    ``examples`` holds the contexts, the token marked [[ ]], separated by `` | ``, so the
    table can be cached as plain columns. With ``targets_only`` (the contextual probe)
    the groups are formed within each target's occurrences, so that a group's meaning
    purity is not diluted by other tokens' meanings. Extra columns then: ``target``;
    ``meaning_majority_share``, the share of the target's most common meaning; and
    ``meaning_purity_shuffled``, the group's purity with meanings shuffled among the
    target's occurrences (mean over ``n_shuffles``): the purity that a group of that size
    reaches by chance, which for small groups is well above the majority share.
    """
    from moe_lib.analysis import paths

    if not targets_only:
        table = paths.path_groups(ds, min_tokens=min_tokens, max_groups=max_groups, n_examples=n_examples, seed=seed)
        return table.assign(examples=table["examples"].map(lambda contexts: " | ".join(contexts)))
    ds = ds.load()  # one read for every target's passes over the trace
    rng = np.random.default_rng(seed)
    is_target = np.asarray(ds["is_target"].values, bool)
    owner, meaning = np.asarray(ds["target"].values, object), np.asarray(ds["meaning"].values, object)
    parts = []
    for target in targets(ds):
        mask = is_target & (owner == target)
        rows = np.flatnonzero(mask)
        options = dict(min_tokens=min_tokens, max_groups=max_groups, labels=("meaning",), tokens=mask, seed=seed)
        table = paths.path_groups(ds, n_examples=n_examples, **options)
        shuffled = []
        for _ in range(n_shuffles):
            permuted = meaning.copy()
            permuted[rows] = rng.permutation(meaning[rows])
            # The routes are unchanged, so the groups and their order are the same.
            again = paths.path_groups(ds.assign_coords(meaning=("token", permuted)), n_examples=0, **options)
            shuffled.append(again["meaning_purity"].to_numpy())
        majority = pd.Series(meaning[rows]).value_counts(normalize=True).iloc[0]
        parts.append(table.assign(target=target, meaning_majority_share=majority,
                                  meaning_purity_shuffled=np.mean(shuffled, axis=0) if len(table) else []))
    table = pd.concat(parts, ignore_index=True).sort_values("n_tokens", ascending=False, kind="stable")
    return table.assign(examples=table["examples"].map(lambda contexts: " | ".join(contexts))).reset_index(drop=True)


def paths_to_cover_with_baseline(ds: xr.Dataset, label: str = "domain", shares=(0.8, 0.95), n_shuffles: int = 5,
                                 seed: int = 0) -> pd.DataFrame:
    """Return ``paths.paths_to_cover`` per label value with a shuffled-label baseline.

    The baseline shuffles the label over the tokens (keeping each value's size) and counts
    again: the paths a value would need if its tokens were a random draw of the probe.
    Extra columns ``n_paths_<pct>_shuffled`` (mean over shuffles) for each share, and
    ``n_paths_<pct>_token_null``: the label shuffled only within each token id, so the
    draw keeps the value's tokens and what their identities alone decide.
    """
    from moe_lib.analysis import paths

    observed = paths.paths_to_cover(ds, label=label, shares=tuple(shares))
    rng = np.random.default_rng(seed)
    values = np.asarray(ds[label].values, dtype=object)
    token = np.asarray(ds["token_id"].values)
    nulls = {"shuffled": None, "token_null": token}  # over all tokens; within each token id
    for suffix, groups in nulls.items():
        shuffled = [paths.paths_to_cover(ds.assign_coords({label: ("token", permute_within(values, groups, rng))}),
                                         label=label, shares=tuple(shares)).set_index(label) for _ in range(n_shuffles)]
        for share in shares:
            column = f"n_paths_{round(share * 100)}"
            mean = sum(s[column] for s in shuffled) / n_shuffles
            observed[f"{column}_{suffix}"] = mean.reindex(observed[label]).to_numpy()
    return observed


def route_cluster_agreement(ds: xr.Dataset, targets_only: bool = False, max_tokens: int = 2000,
                            min_cluster_size: int = 10, n_permutations: int = 100, seed: int = 0) -> pd.DataFrame:
    """Return ``route_clusters.cluster_label_agreement`` of HDBSCAN clusters of full routes.

    On the domains probe the labels are domain and language; with ``targets_only`` (the
    contextual probe) the target occurrences are clustered and compared with their
    ``target`` (which token) and their ``meaning``.
    """
    from moe_lib.analysis import route_clusters

    labels = ("target", "meaning") if targets_only else ("domain", "language")
    ds = _target_rows(ds) if targets_only else ds
    clusters = route_clusters.cluster_routes(ds, max_tokens=max_tokens, min_cluster_size=min_cluster_size, seed=seed)
    return route_clusters.cluster_label_agreement(ds, clusters, labels=labels, n_permutations=n_permutations,
                                                  seed=seed)


def route_map_table(ds: xr.Dataset, targets_only: bool = False, max_tokens: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Return ``route_clusters.route_map`` of full routes with each token's labels beside it:
    domain and language on the domains probe, target and meaning with ``targets_only``."""
    from moe_lib.analysis import route_clusters

    labels = ("target", "meaning") if targets_only else ("domain", "language")
    ds = _target_rows(ds) if targets_only else ds
    table = route_clusters.route_map(ds, max_tokens=max_tokens, seed=seed)
    for name in labels:
        table[name] = np.asarray(ds[name].values, dtype=object)[table["token"].to_numpy()]
    return table


def sample_texts(ds: xr.Dataset) -> np.ndarray:
    """Return for every token the text of its sample (its ``seq``'s token strings joined in
    ``pos`` order), object array (token,)."""
    frame = pd.DataFrame({"seq": np.asarray(ds["seq"].values), "pos": np.asarray(ds["pos"].values),
                          "piece": np.asarray(ds["token_str"].values, dtype=object)})
    texts = frame.sort_values(["seq", "pos"], kind="stable").groupby("seq")["piece"].agg("".join)
    return texts.reindex(frame["seq"]).to_numpy(dtype=object)


def path_context_by_target(ds: xr.Dataset, n_permutations: int = 200, seed: int = 0) -> pd.DataFrame:
    """Return, per contextual target, the Mantel test of route similarity against context
    similarity over its occurrences (``route_clusters.path_context_correlation``).

    A context is the occurrence's whole sample, embedded by the all-MiniLM-L6-v2 sentence
    encoder (:func:`moe_lib.site.embeddings.cached_embeddings`); routes are the top-1
    experts of every layer. One row per target: the columns of ``path_context_correlation``
    and ``target``. Where all of a target's occurrences take one route the correlation is
    undefined: ``spearman`` is NaN, and so is ``p_value`` (``path_context_correlation``
    would report the smallest p-value, since no shuffle beats a NaN).
    """
    from moe_lib.analysis import route_clusters
    from moe_lib.site.embeddings import cached_embeddings

    ds = ds.load()  # the texts need every token of the samples, the tests only the targets
    occurrences = _target_rows(ds)
    vectors = cached_embeddings(sample_texts(ds)[np.asarray(ds["is_target"].values, bool)])
    owner = np.asarray(occurrences["target"].values, dtype=object)
    parts = []
    for target in targets(ds):
        rows = np.flatnonzero(owner == target)
        table = route_clusters.path_context_correlation(occurrences.isel(token=rows), vectors[rows],
                                                        n_permutations=n_permutations, seed=seed)
        parts.append(table.assign(target=target))
    table = pd.concat(parts, ignore_index=True)
    return table.assign(p_value=table["p_value"].where(table["spearman"].notna()))


def meaning_prediction_long(table: pd.DataFrame) -> pd.DataFrame:
    """Return ``paths.meaning_prediction`` rows in long form for side-by-side heatmaps:
    ``measure`` is "path or expert", "shuffled meanings" or "token's majority meaning",
    its share of meanings guessed right in ``accuracy``; the window columns are kept."""
    measures = {"path or expert": "accuracy", "shuffled meanings": "accuracy_shuffled",
                "token's majority meaning": "majority_share"}
    rest = table.drop(columns=list(measures.values()))
    long = pd.concat([rest.assign(measure=name, accuracy=table[column]) for name, column in measures.items()],
                     ignore_index=True)
    long["measure"] = pd.Categorical(long["measure"], categories=list(measures), ordered=True)
    return long


def vocabulary_summary(table: pd.DataFrame, by: tuple[str, ...] = ("model", "token_kind", "layer")) -> pd.DataFrame:
    """Return the occurrence-weighted mean vocabulary specialization and its shuffled-id
    baseline per ``by`` group (columns ``specialization``, ``specialization_shuffled``,
    ``n_occurrences``, ``n_token_ids``)."""
    by = [c for c in by if c in table.columns]
    weighted = table.assign(observed=table["specialization"] * table["n_occurrences"],
                            chance=table["specialization_shuffled"] * table["n_occurrences"])
    grouped = weighted.groupby(by, observed=True)
    out = grouped[["observed", "chance", "n_occurrences"]].sum().reset_index()
    out["specialization"] = out.pop("observed") / out["n_occurrences"]
    out["specialization_shuffled"] = out.pop("chance") / out["n_occurrences"]
    return out.assign(n_token_ids=grouped.size().to_numpy())


def characteristic_summary(table: pd.DataFrame, layer: int, n_top: int = 5,
                           experts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return one row per model and expert of ``specialization.characteristic_tokens`` at
    ``layer``: its ``n_top`` most characteristic tokens and their lifts (tuples, most
    characteristic first; the page formats them) and the mean share of those tokens'
    occurrences that reach the expert. ``experts`` (model and expert columns) lists every
    expert to show: one without a characteristic token gets a row with empty tuples."""
    part = table[(table["layer"] == layer) & (table["rank"] < n_top)].sort_values(["expert", "rank"])
    by = [c for c in ("model", "expert") if c in part.columns]
    grouped = part.groupby(by, observed=True)
    summary = pd.DataFrame({
        "tokens": grouped["token_str"].agg(lambda s: tuple(str(t) for t in s)),
        "lifts": grouped["lift"].agg(tuple),
        "share_of_token": grouped["share_of_token"].mean(),
    }).reset_index()
    if experts is None:
        return summary
    keys = [c for c in by if c in experts.columns]
    listed = experts[keys].drop_duplicates().astype({c: summary[c].dtype for c in keys if c != "model"})
    if "model" in keys:
        listed, summary = listed.astype({"model": str}), summary.astype({"model": str})
    full = listed.merge(summary, on=keys, how="left")
    if "model" in keys and isinstance(experts["model"].dtype, pd.CategoricalDtype):  # keep the chapter's order
        full["model"] = pd.Categorical(full["model"], categories=experts["model"].cat.categories, ordered=True)
    full = full.sort_values(keys, kind="stable").reset_index(drop=True)
    for column in ("tokens", "lifts"):
        full[column] = full[column].map(lambda v: v if isinstance(v, tuple) else ())
    return full


def independent_layers(ds: xr.Dataset, seed: int = 0) -> xr.Dataset:
    """Return a top-1 trace whose experts are each layer's own, shuffled across tokens
    independently per layer: every layer keeps its load, the layers lose their link."""
    from moe_lib.analysis.common import top1

    rng = np.random.default_rng(seed)
    routes = top1(ds)
    shuffled = np.stack([rng.permutation(routes[:, i]) for i in range(routes.shape[1])], axis=1)
    return xr.Dataset({"expert_id": (("token", "layer", "slot"), shuffled[:, :, None].astype(np.int16))},
                      coords={"layer": ds["layer"].values, "slot": [0]}, attrs=dict(ds.attrs))


def path_windows_with_baseline(ds: xr.Dataset, seed: int = 0) -> pd.DataFrame:
    """Return ``paths.path_windows`` of the trace and of :func:`independent_layers`, told
    apart by ``kind`` ("observed", "shuffled layers": names that sort in that order, as
    facets do once the cache has dropped any categorical), with ``seen_over_reachable``: distinct
    paths seen over the paths the tokens could reach (min of n_experts**length and n_tokens)."""
    from moe_lib.analysis import paths

    table = pd.concat([paths.path_windows(ds).assign(kind="observed"),
                       paths.path_windows(independent_layers(ds, seed)).assign(kind="shuffled layers")],
                      ignore_index=True)
    return table.assign(seen_over_reachable=table["n_paths_seen"] / table["n_paths_reachable"])


def group_purity_summary(groups: pd.DataFrame) -> pd.DataFrame:
    """Return per model the token-weighted mean meaning purity of ``path_groups_table``
    groups (``targets_only``), of its shuffled baseline and of the majority share, with
    ``n_groups`` and ``n_tokens`` (occurrences in groups)."""
    columns = ["meaning_purity", "meaning_purity_shuffled", "meaning_majority_share"]
    by = [c for c in ("model",) if c in groups.columns]
    weighted = groups[columns].mul(groups["n_tokens"], axis=0).assign(n_tokens=groups["n_tokens"])
    grouped = weighted.groupby([groups[c] for c in by] or np.zeros(len(groups)), observed=True)
    out = grouped.sum()
    out[columns] = out[columns].div(out["n_tokens"], axis=0)
    return out.assign(n_groups=grouped.size()).reset_index(drop=not by)
