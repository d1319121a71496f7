"""Specialization net of token identity: labels shuffled within each token id.

Token identity decides most routing (most occurrences of a token id go to one expert), and
each domain writes with its own vocabulary, so a domain's expert distribution differs from
the pooled one even where routing reads nothing but the token. The same holds for the next
token: " States" follows " United", so next-token specialization inherits input-token
specialization. Each measure here is set against its label shuffled within the token id
that could explain it (a domain within the input token id; a next or predicted token id
within the input token id): what stays above that null is the label's own link with the
routing. The unconditional shuffles of ``specialization`` sit below both.

An in-memory trace is one block of the chunked computation (``chunked_within``), so both
draw their shuffles by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis.chunked import codes_in, is_chunked, label_index, map_blocks, sum_blocks
from moe_lib.analysis.chunked_within import pair_counts, shuffled_block_values_within, within_group_draws
from moe_lib.analysis.common import expert_ids, group_expert_counts
from moe_lib.analysis.specialization import _tv  # the TV measure itself, one definition
from moe_lib.analysis.specialization import next_token_ids, predicted_token_ids


def _counts_within(ds: xr.Dataset, names: Sequence[str], codes_of: Callable, groups_of: Callable,
                   n_values: int, n_slots: int | None, n_permutations: int, seed: int):
    """Return tokens per value (value,), route counts (value, layer, expert) by the codes
    ``codes_of(block)`` gives (-1 skips a token), and the same for each of ``n_permutations``
    shuffles of the codes within the groups ``groups_of(block)`` gives (permutation, value,
    layer, expert)."""
    n_experts = int(ds.attrs["n_experts"])
    pairs = map_blocks(ds, lambda block: pair_counts(groups_of(block), codes_of(block)), names)
    per_value = pd.concat(pairs).groupby("value")["n"].sum()
    n_tokens = per_value.reindex(range(n_values), fill_value=0).to_numpy()
    draws = [within_group_draws(pairs, seed + p) for p in range(n_permutations)]

    def counts(block):
        ids, codes, groups, b = expert_ids(block, n_slots), codes_of(block), groups_of(block), block.attrs["block"]
        kept = [group_expert_counts(ids, shuffled_block_values_within(groups, draw[b], seed + p, b), n_values, n_experts)
                for p, draw in enumerate(draws)]
        return group_expert_counts(ids, codes, n_values, n_experts), np.stack(kept)

    return (n_tokens, *sum_blocks(ds, counts, names))


def domain_tv_within_token(ds: xr.Dataset, label: str = "domain", within: str = "token_id",
                           n_slots: int | None = None, n_permutations: int = 20, seed: int = 0) -> pd.DataFrame:
    """Return per layer and label value the TV distance of its expert distribution from the
    pooled one, against the label shuffled within each value of ``within`` (the token id).

    The null keeps each token id's own mix of labels, so it reproduces the distance that the
    domains' different vocabularies give through token-driven routing; the observed distance
    above it is the label's effect beyond the tokens.

    Returns
    -------
    DataFrame
        Columns layer, <label>, n_tokens, tv_distance, tv_within (mean over shuffles),
        tv_within_q95.
    """
    if within not in ds.variables:
        raise KeyError(f"trace of model {ds.attrs.get('model')!r} has no token variable {within!r} "
                       "to shuffle the labels within")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    values = label_index(ds, label)
    n_tokens, observed, kept = _counts_within(
        ds, ["expert_id", label, within], lambda block: codes_in(block, label, values),
        lambda block: np.asarray(block[within].values, np.int64), len(values), n_slots, n_permutations, seed)
    tv, kept = _tv(observed), np.stack([_tv(c) for c in kept])  # (value, layer), (permutation, value, layer)
    n_layers = tv.shape[1]
    return pd.DataFrame({
        "layer": np.tile(ds["layer"].values, len(values)),
        label: np.repeat(np.asarray(values, object), n_layers),
        "n_tokens": np.repeat(n_tokens, n_layers),
        "tv_distance": tv.ravel(),
        "tv_within": kept.mean(axis=0).ravel(),
        "tv_within_q95": np.quantile(kept, 0.95, axis=0).ravel(),
    })


def _distinct_ids(ds: xr.Dataset) -> np.ndarray:
    """Return the sorted distinct attributed ids (column 0 of ``attributed``), -1 left out."""
    def distinct(block):
        ids = np.asarray(block["attributed"].values[:, 0], np.int64)
        return set(np.unique(ids[ids >= 0]).tolist())

    return np.array(sorted(set().union(*map_blocks(ds, distinct, ["attributed"]))), dtype=np.int64)


def specialization_within_input(ds: xr.Dataset, token_ids, min_count: int = 5, seed: int = 0,
                                n_permutations: int = 1) -> pd.DataFrame:
    """Return per layer and attributed id the vocabulary specialization of ``token_ids``
    (the share of its occurrences on its most frequent top-1 expert), against the ids
    shuffled within each input token id.

    ``token_ids`` (token,) is what each occurrence is attributed to (the next or predicted
    token; -1 skips, as at a text's end). The null keeps, for every input token, the ids that
    follow it, so it gives the specialization that routing by the input token alone would
    give the attributed ids.

    Returns
    -------
    DataFrame
        Columns layer, token_id (the attributed id), n_occurrences, specialization,
        specialization_within (mean over shuffles).
    """
    if tuple(np.shape(token_ids)) != (ds.sizes["token"],):
        raise ValueError(f"token_ids has shape {np.shape(token_ids)}, expected ({ds.sizes['token']},)")
    # One derived array holds each occurrence's attributed id and its group, the input id:
    # a block handed two arrays derived from one stored array loses a dependency in Dask's
    # graph. Occurrences without an attributed id form a group of their own (-1).
    input_ids = ds["token_id"].data.astype(np.int64)
    if is_chunked(ds):
        import dask.array as da  # the chunked path only

        stack = da.stack
    else:
        stack = np.stack
    ds = ds.assign_coords(attributed=(("token", "id_and_group"),
                                      stack([token_ids, input_ids * (token_ids >= 0) - (token_ids < 0)], axis=1)))
    uniques = _distinct_ids(ds)

    def codes_of(block):
        ids = np.asarray(block["attributed"].values[:, 0], np.int64)
        return np.where(ids >= 0, np.searchsorted(uniques, ids), -1)

    def groups_of(block):
        return np.asarray(block["attributed"].values[:, 1], np.int64)

    n_occurrences, observed, kept = _counts_within(ds, ["expert_id", "attributed"], codes_of, groups_of,
                                                   uniques.size, 1, n_permutations, seed)
    keep = n_occurrences >= min_count
    observed, kept, n_occurrences = observed[keep], kept[:, keep], n_occurrences[keep]
    n_ids, n_layers = observed.shape[:2]
    return pd.DataFrame({
        "layer": np.tile(ds["layer"].values, n_ids),
        "token_id": np.repeat(uniques[keep], n_layers),
        "n_occurrences": np.repeat(n_occurrences, n_layers),
        "specialization": (observed.max(axis=-1) / n_occurrences[:, None]).ravel(),
        "specialization_within": (kept.max(axis=-1) / n_occurrences[None, :, None]).mean(axis=0).ravel(),
    })


def output_tokens_within_input(ds: xr.Dataset, min_count: int = 5, seed: int = 0) -> pd.DataFrame:
    """Return ``specialization_within_input`` for the true next token and, where the trace
    holds the model's predictions, the predicted next token, told apart by ``token_kind``."""
    kinds = {"next token": next_token_ids(ds)}
    if "predicted_id" in ds:
        kinds["predicted next token"] = predicted_token_ids(ds)
    return pd.concat([specialization_within_input(ds, ids, min_count, seed).assign(token_kind=kind)
                      for kind, ids in kinds.items()], ignore_index=True)


def occurrence_weighted(table: pd.DataFrame, columns: Sequence[str],
                        by: Sequence[str] = ("model", "token_kind", "layer")) -> pd.DataFrame:
    """Return the means of ``columns`` per ``by`` group (those present), weighted by
    ``n_occurrences`` as the OLMoE paper averages specialization over token ids."""
    by = [c for c in by if c in table.columns]
    weighted = table[by].assign(**{c: table[c] * table["n_occurrences"] for c in columns},
                                n_occurrences=table["n_occurrences"])
    grouped = weighted.groupby(by, observed=True)
    totals = grouped["n_occurrences"].sum()
    return grouped[list(columns)].sum().div(totals, axis=0).assign(n_occurrences=totals).reset_index()
