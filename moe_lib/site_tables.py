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
    from moe_lib.train import RECIPES

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
    held-out domain).
    """
    from moe_lib import site

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
            "val_loss": float(final["val_loss"].iloc[0]),
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
