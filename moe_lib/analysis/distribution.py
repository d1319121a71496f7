"""How routing is distributed: weight by slot, expert load, router entropy, and how often
consecutive tokens keep their experts (the measure of the Mixtral paper's routing section).

All functions take a trace (see ``moe_lib.core.schema``) and return tidy DataFrames, one row per
layer (or per layer and slot / expert); ``layer`` holds the absolute layer index. A chunked
trace (``open_trace(path, chunks=...)``) is reduced block by block (``analysis.chunked``),
with the same results (sums may differ in the last bits).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis.chunked import exact_quantiles, is_chunked, sum_blocks
from moe_lib.analysis.common import (
    entropy_bits,
    expert_ids,
    layer_expert_counts,
    next_in_sequence,
    set_overlap,
)
from moe_lib.core.schema import router_probs

# Whiskers at 5 % and 95 %: with millions of tokens, min/max whiskers show only outliers.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
QUANTILE_COLUMNS = ("q05", "q25", "median", "q75", "q95")
_TOKEN_CHUNK = 65536  # tokens per block of per-token work: (chunk, layer, expert) floats


def _load_counts(ds: xr.Dataset, n_slots: int | None) -> np.ndarray:
    """Return assignment counts (layer, expert) of the first ``n_slots`` slots."""
    n_experts = int(ds.attrs["n_experts"])
    return sum_blocks(ds, lambda block: layer_expert_counts(expert_ids(block, n_slots), n_experts), ["expert_id"])


def weight_by_slot(ds: xr.Dataset) -> pd.DataFrame:
    """Return quantiles of the routing weight per (layer, slot), ready for a boxplot.

    Returns
    -------
    DataFrame
        Columns layer, slot, n_tokens, mean, q05, q25, median, q75, q95 (weights as the layer
        used them, unitless).
    """
    n_tokens, n_layers, top_k = ds.sizes["token"], ds.sizes["layer"], ds.sizes["slot"]
    if is_chunked(ds):
        def rows_of(block):
            weight = np.asarray(block["weight"].transpose("token", "layer", "slot").values, np.float32)
            return weight.reshape(weight.shape[0], -1).T
        quantiles, sums, _ = exact_quantiles(ds, rows_of, n_layers * top_k, QUANTILES, ["weight"])
        mean = sums / n_tokens
    else:
        weight = np.asarray(ds["weight"].transpose("token", "layer", "slot").values, np.float32)
        # One contiguous row per (layer, slot): quantiles along rows sort far faster than down
        # a strided token axis.
        rows = np.ascontiguousarray(weight.reshape(n_tokens, -1).T)
        quantiles = np.quantile(rows, QUANTILES, axis=1)
        mean = weight.mean(axis=0, dtype=np.float64).ravel()
    quantiles = quantiles.reshape(len(QUANTILES), n_layers, top_k)
    layer, slot = np.meshgrid(ds["layer"].values, np.arange(top_k), indexing="ij")
    table = pd.DataFrame(
        {"layer": layer.ravel(), "slot": slot.ravel(), "n_tokens": n_tokens, "mean": mean}
    )
    for name, values in zip(QUANTILE_COLUMNS, quantiles):
        table[name] = values.ravel()
    return table


def expert_load(ds: xr.Dataset, n_slots: int | None = None) -> pd.DataFrame:
    """Return each expert's load per layer: assignment counts and share of the layer's total.

    Parameters
    ----------
    n_slots : int, optional
        Count only the first ``n_slots`` slots (1 = top-1 load); default all ``top_k``.

    Returns
    -------
    DataFrame
        Columns layer, expert, n_assignments, share (sums to 1 per layer), uniform_share (1/E).
    """
    n_experts = int(ds.attrs["n_experts"])
    counts = _load_counts(ds, n_slots)  # (layer, expert)
    n_layers = counts.shape[0]
    return pd.DataFrame(
        {
            "layer": np.repeat(ds["layer"].values, n_experts),
            "expert": np.tile(np.arange(n_experts), n_layers),
            "n_assignments": counts.ravel(),
            "share": (counts / counts.sum(axis=1, keepdims=True)).ravel(),
            "uniform_share": 1.0 / n_experts,
        }
    )


def load_balance(ds: xr.Dataset, n_slots: int | None = None) -> pd.DataFrame:
    """Return per-layer balance of expert load: largest over mean load and load entropy.

    Returns
    -------
    DataFrame
        Columns layer, max_over_mean (1 = perfectly balanced), entropy_bits (of the load
        shares), max_entropy_bits (log2 n_experts), normalised_entropy (ratio of the two),
        n_dead (experts that received no assignment).
    """
    n_experts = int(ds.attrs["n_experts"])
    counts = _load_counts(ds, n_slots)
    entropy = entropy_bits(counts, axis=1)
    return pd.DataFrame(
        {
            "layer": ds["layer"].values,
            "max_over_mean": counts.max(axis=1) / counts.mean(axis=1),
            "entropy_bits": entropy,
            "max_entropy_bits": np.log2(n_experts),
            "normalised_entropy": entropy / np.log2(n_experts),
            "n_dead": (counts == 0).sum(axis=1),
        }
    )


def router_entropy_per_token(ds: xr.Dataset) -> tuple[xr.DataArray, str]:
    """Return each token's router entropy in bits (token, layer), and the source used.

    With ``router_logits`` the entropy is that of the full router distribution (sigmoid
    scores are normalised to sum to 1 first), bounded by log2 n_experts; the source is
    ``"router_logits"``. Without them it is the entropy of the top-k weights renormalised to
    sum to 1, bounded by log2 top_k; the source is ``"top_k_weights"``.
    """
    has_logits = "router_logits" in ds
    scores = ds["router_logits"].transpose("token", "layer", "expert") if has_logits else \
        ds["weight"].transpose("token", "layer", "slot")
    source = "router_logits" if has_logits else "top_k_weights"
    attrs = {"units": "bits", "source": source}
    if is_chunked(ds):  # a lazy result, one block of tokens at a time
        scoring = str(ds.attrs["scoring"])

        def block_entropy(values: np.ndarray) -> np.ndarray:
            if has_logits:
                values = router_probs(xr.DataArray(values, dims=scores.dims), scoring).values
            return entropy_bits(values, axis=-1, dtype=np.float32)

        lazy = scores.data.rechunk({1: -1, 2: -1}).map_blocks(block_entropy, drop_axis=2, dtype=np.float32)
        entropy = xr.DataArray(lazy, dims=("token", "layer"), coords={"layer": ds["layer"].values},
                               name="router_entropy", attrs=attrs)
        return entropy, source
    blocks = []
    # Blocks of tokens keep the float temporaries small and in cache.
    for start in range(0, ds.sizes["token"], _TOKEN_CHUNK):
        block = scores.isel(token=slice(start, start + _TOKEN_CHUNK))
        probs = router_probs(block, str(ds.attrs["scoring"])).values if has_logits else block.values
        blocks.append(entropy_bits(probs, axis=-1, dtype=np.float32))
    values = np.concatenate(blocks)
    entropy = xr.DataArray(
        values, dims=("token", "layer"), coords={"layer": ds["layer"].values},
        name="router_entropy", attrs=attrs,
    )
    return entropy, source


def router_entropy(ds: xr.Dataset) -> pd.DataFrame:
    """Return quantiles of per-token router entropy by layer, and which data gave it.

    Returns
    -------
    DataFrame
        Columns layer, source ("router_logits" or "top_k_weights", see
        ``router_entropy_per_token``), mean, q05, q25, median, q75, q95 (bits) and
        max_entropy_bits (log2 n_experts for logits, log2 top_k for weights).
    """
    entropy, source = router_entropy_per_token(ds)
    if is_chunked(entropy):
        quantiles, sums, counts = exact_quantiles(
            xr.Dataset({"router_entropy": entropy}), lambda block: block["router_entropy"].values.T,
            entropy.sizes["layer"], QUANTILES,
        )
        mean = sums / counts
    else:
        rows = np.ascontiguousarray(entropy.values.T)  # (layer, token): quantiles along rows
        quantiles, mean = np.quantile(rows, QUANTILES, axis=1), rows.mean(axis=1, dtype=np.float64)
    bound = ds.attrs["n_experts"] if source == "router_logits" else ds.attrs["top_k"]
    table = pd.DataFrame({"layer": ds["layer"].values, "source": source, "mean": mean})
    for name, column in zip(QUANTILE_COLUMNS, quantiles):
        table[name] = column
    table["max_entropy_bits"] = np.log2(bound)
    return table


def consecutive_routing(ds: xr.Dataset) -> pd.DataFrame:
    """Return how often adjacent tokens share experts per layer, against chance.

    Pairs are tokens t, t+1 of the same text (same ``seq``, ``pos`` + 1). The chance
    baselines treat the two tokens as independent draws with the layer's observed loads:
    for top-1, P(same) = sum_e p_e**2 with p_e the top-1 load share; for top-k sets, the
    expected overlap is sum_e q_e**2 with q_e the share of tokens that have e in their
    top-k (exact for independent sets with those inclusion rates).

    Returns
    -------
    DataFrame
        Columns layer, n_pairs, p_same_top1, p_same_top1_chance, topk_overlap (mean
        |A ∩ B| / k, in [0, 1]), topk_overlap_chance, p_any_shared (at least one shared
        expert in the top-k), ratio_top1 (observed over chance).
    """
    n_experts = int(ds.attrs["n_experts"])
    n_tokens, top_k = ds.sizes["token"], ds.sizes["slot"]

    def pair_sums(block):
        # A block sees the next block's first token, so pairs across blocks count once.
        ids = expert_ids(block)  # (token, layer, slot)
        pair = next_in_sequence(block)
        pair[block.attrs["n_own"]:] = False
        first, second = ids[:-1][pair[:-1]], ids[1:][pair[:-1]]  # (pair, layer, slot)
        overlap = set_overlap(first, second)  # (pair, layer)
        own = ids[: block.attrs["n_own"]]
        return {
            "n_pairs": int(pair.sum()),
            "same_top1": (first[..., 0] == second[..., 0]).sum(axis=0),
            "overlap": overlap.sum(axis=0, dtype=np.int64),
            "any_shared": (overlap > 0).sum(axis=0),
            "top1": layer_expert_counts(own[..., :1], n_experts),
            "inclusion": layer_expert_counts(own, n_experts),
        }

    sums = sum_blocks(ds, pair_sums, ["expert_id", "seq", "pos"], overlap=1)
    n_pairs = sums["n_pairs"]
    same_top1 = sums["same_top1"] / n_pairs
    top1_share = sums["top1"] / n_tokens
    inclusion = sums["inclusion"] / n_tokens
    return pd.DataFrame(
        {
            "layer": ds["layer"].values,
            "n_pairs": int(n_pairs),
            "p_same_top1": same_top1,
            "p_same_top1_chance": (top1_share**2).sum(axis=1),
            "topk_overlap": sums["overlap"] / n_pairs / top_k,
            "topk_overlap_chance": (inclusion**2).sum(axis=1) / top_k,
            "p_any_shared": sums["any_shared"] / n_pairs,
            "ratio_top1": same_top1 / (top1_share**2).sum(axis=1),
        }
    )
