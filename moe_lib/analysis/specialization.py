"""Expert specialization as the OLMoE paper measures it: domain shares against the uniform
k/E, total-variation distance of each domain from the pooled routing, vocabulary
specialization, each expert's most characteristic tokens, and co-activation.

Unless ``n_slots`` says otherwise, every top-k slot counts as an assignment. A chunked trace
(``open_trace(path, chunks=...)``) is counted block by block (``analysis.chunked``) with the
same results; only the shuffled baselines draw other (equally uniform) shuffles there, since
a shuffle of the whole token dimension is drawn block by block.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis.chunked import (
    codes_in,
    is_chunked,
    label_index,
    map_blocks,
    shuffled_block_values,
    shuffled_counts_by_block,
    sum_blocks,
)
from moe_lib.analysis.common import (
    expert_ids,
    group_expert_counts,
    label_codes,
    layer_expert_counts,
    top1,
)


def domain_expert_share(ds: xr.Dataset, label: str = "domain", n_slots: int | None = None) -> pd.DataFrame:
    """Return, per layer, label value and expert, the share of the value's tokens routed there.

    Returns
    -------
    DataFrame
        Columns layer, <label>, expert, n_tokens (of the value), n_routed, share (n_routed /
        n_tokens; sums to k over experts), uniform_share (k / n_experts), ratio (share over
        uniform_share).
    """
    n_experts = int(ds.attrs["n_experts"])
    top_k = ds.sizes["slot"] if n_slots is None else min(n_slots, ds.sizes["slot"])
    if is_chunked(ds):
        values = label_index(ds, label)
        counts, n_tokens = sum_blocks(ds, lambda block: _label_counts(block, label, values, n_slots),
                                      ["expert_id", label])
    else:
        ids = expert_ids(ds, n_slots)
        codes, values = label_codes(ds, label)
        counts = group_expert_counts(ids, codes, len(values), n_experts)  # (value, layer, expert)
        n_tokens = np.bincount(codes[codes >= 0], minlength=len(values))
    n_values, n_layers, _ = counts.shape
    uniform = top_k / n_experts
    share = counts / n_tokens[:, None, None]
    return pd.DataFrame(
        {
            "layer": np.tile(np.repeat(ds["layer"].values, n_experts), n_values),
            label: np.repeat(np.asarray(values, object), n_layers * n_experts),
            "expert": np.tile(np.arange(n_experts), n_values * n_layers),
            "n_tokens": np.repeat(n_tokens, n_layers * n_experts),
            "n_routed": counts.ravel(),
            "share": share.ravel(),
            "uniform_share": uniform,
            "ratio": share.ravel() / uniform,
        }
    )


def _label_counts(block: xr.Dataset, label: str, values: pd.Index, n_slots: int | None):
    """Return a block's counts (value, layer, expert) and tokens per value (value,)."""
    codes = codes_in(block, label, values)
    counts = group_expert_counts(expert_ids(block, n_slots), codes, len(values), int(block.attrs["n_experts"]))
    return counts, np.bincount(codes[codes >= 0], minlength=len(values))


def _tv(counts: np.ndarray) -> np.ndarray:
    """Return TV distance (value, layer) of each value's expert distribution from the pooled."""
    pooled = counts.sum(axis=0, keepdims=True)
    pooled = pooled / pooled.sum(axis=-1, keepdims=True)
    total = counts.sum(axis=-1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0)
    return 0.5 * np.abs(p - pooled).sum(axis=-1)


def domain_tv_distance(
    ds: xr.Dataset,
    label: str = "domain",
    n_slots: int | None = None,
    n_permutations: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Return per layer and label value the total-variation distance of its expert
    distribution from the pooled one, with a shuffled-label baseline.

    TV = 1/2 sum_e |p_value(e) - p_pooled(e)|, in [0, 1]. The baseline shuffles the label
    over the tokens (seeded), keeping each value's size, so it shows the distance that
    finite samples give by chance.

    Returns
    -------
    DataFrame
        Columns layer, <label>, n_tokens, tv_distance, tv_shuffled (mean over shuffles),
        tv_shuffled_q95.
    """
    if is_chunked(ds):
        tv, shuffled, n_tokens = _tv_chunked(ds, label, n_slots, n_permutations, seed)
        values = label_index(ds, label)
    else:
        rng = np.random.default_rng(seed)
        n_experts = int(ds.attrs["n_experts"])
        ids = expert_ids(ds, n_slots)
        codes, values = label_codes(ds, label)
        tv = _tv(group_expert_counts(ids, codes, len(values), n_experts))  # (value, layer)
        shuffled = np.stack(
            [_tv(group_expert_counts(ids, rng.permutation(codes), len(values), n_experts))
             for _ in range(n_permutations)]
        )
        n_tokens = np.bincount(codes[codes >= 0], minlength=len(values))
    n_layers = tv.shape[1]
    return pd.DataFrame(
        {
            "layer": np.tile(ds["layer"].values, len(values)),
            label: np.repeat(np.asarray(values, object), n_layers),
            "n_tokens": np.repeat(n_tokens, n_layers),
            "tv_distance": tv.ravel(),
            "tv_shuffled": shuffled.mean(axis=0).ravel(),
            "tv_shuffled_q95": np.quantile(shuffled, 0.95, axis=0).ravel(),
        }
    )


def _block_sizes(ds: xr.Dataset, func, names) -> np.ndarray:
    return np.asarray(map_blocks(ds, func, names))


def _tv_chunked(ds: xr.Dataset, label: str, n_slots: int | None, n_permutations: int, seed: int):
    """Return TV (value, layer), shuffled TVs (permutation, value, layer) and tokens per
    value, counted block by block; the shuffles are drawn by block (``chunked``)."""
    n_experts = int(ds.attrs["n_experts"])
    values = label_index(ds, label)
    n_values = len(values)
    names = ["expert_id", label]
    # Per block, tokens per code, code -1 (missing) first: what the shuffles redistribute.
    by_block = _block_sizes(ds, lambda b: np.bincount(codes_in(b, label, values) + 1, minlength=n_values + 1), names)
    sizes = by_block.sum(axis=1)
    draws = [shuffled_counts_by_block(by_block.sum(axis=0), sizes, seed=seed + p) for p in range(n_permutations)]

    def counts(block):
        ids = expert_ids(block, n_slots)
        observed = group_expert_counts(ids, codes_in(block, label, values), n_values, n_experts)
        b = block.attrs["block"]
        shuffled = np.stack([
            group_expert_counts(ids, shuffled_block_values(np.arange(-1, n_values), draw[b], seed + p, b),
                                n_values, n_experts)
            for p, draw in enumerate(draws)
        ]) if draws else np.zeros((0, n_values, ids.shape[1], n_experts), np.int64)
        return observed, shuffled

    observed, shuffled = sum_blocks(ds, counts, names)
    n_tokens = by_block.sum(axis=0)[1:]
    return _tv(observed), np.stack([_tv(c) for c in shuffled]) if len(shuffled) else np.zeros((0,) + observed.shape[:2]), n_tokens


def next_token_ids(ds: xr.Dataset) -> np.ndarray:
    """Return the id of the next token in the same text (token,), -1 at a text's end.

    A chunked trace gives a lazy Dask array, each block reading the next block's first token.
    """
    if is_chunked(ds):
        return _next_token_ids_lazy(ds)
    seq, pos = np.asarray(ds["seq"].values), np.asarray(ds["pos"].values)
    token_id = np.asarray(ds["token_id"].values)
    out = np.full(token_id.shape, -1, dtype=np.int64)
    follows = (seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1] + 1)
    out[:-1][follows] = token_id[1:][follows]
    return out


def _next_token_ids_lazy(ds: xr.Dataset):
    """Return ``next_token_ids`` as a lazy Dask array: each array shifted by one token
    (a lazy slice and a one-token pad), rechunked like the trace, compared elementwise."""
    import dask.array as da

    chunks = ds["expert_id"].data.chunks[0]

    def now_and_next(name: str, pad: int):
        array = ds[name].data if is_chunked(ds[name]) else da.from_array(ds[name].values, chunks=(chunks,))
        array = array.astype(np.int64).rechunk((chunks,))
        shifted = da.concatenate([array[1:], da.full((1,), pad, dtype=np.int64)]).rechunk((chunks,))
        return array, shifted

    seq, next_seq = now_and_next("seq", -1)
    pos, next_pos = now_and_next("pos", -1)
    _, next_id = now_and_next("token_id", -1)
    return da.where((next_seq == seq) & (next_pos == pos + 1), next_id, -1)


def predicted_token_ids(ds: xr.Dataset) -> np.ndarray:
    """Return the id the model predicted next at each token (token,), from ``predicted_id``.

    The trace must have been collected with ``predictions=True``; the prediction at the
    last token of a text is kept (it is a prediction like any other, only unchecked).
    """
    if "predicted_id" not in ds:
        raise ValueError(
            f"trace of {ds.attrs.get('model', '?')!r} has no variable 'predicted_id'; "
            "collect it with predictions=True (`trace --predictions`)"
        )
    if is_chunked(ds):
        return ds["predicted_id"].data.astype(np.int64)
    return np.asarray(ds["predicted_id"].values, np.int64)


def _token_expert_counts(routes: np.ndarray, token_ids: np.ndarray, n_experts: int):
    """Return (unique token ids, counts (token id, layer, expert)) of top-1 routes;
    negative ids are left out."""
    keep = token_ids >= 0
    codes, uniques = pd.factorize(token_ids[keep], sort=True)
    return uniques, group_expert_counts(routes[keep], codes, len(uniques), n_experts)


def _distinct_ids(ds: xr.Dataset, name: str) -> np.ndarray:
    """Return the sorted distinct non-negative values of token variable ``name``."""
    def distinct(block):
        ids = np.asarray(block[name].values, np.int64)
        return set(np.unique(ids[ids >= 0]).tolist())

    return np.array(sorted(set().union(*map_blocks(ds, distinct, [name]))), dtype=np.int64)


def _vocabulary_counts_chunked(ds: xr.Dataset, token_ids, seed: int):
    """Return (ids, counts, shuffled counts (id, layer, expert)) of top-1 routes, block by
    block; the ids' shuffle over valid occurrences is drawn by block (``chunked``)."""
    n_experts = int(ds.attrs["n_experts"])
    name = "token_id"
    if token_ids is not None:
        name = "attributed_id"
        ds = ds.assign_coords(attributed_id=("token", token_ids))
    names = ["expert_id", name]
    uniques = _distinct_ids(ds, name)

    def id_counts(block):
        ids = np.asarray(block[name].values, np.int64)
        return np.bincount(np.searchsorted(uniques, ids[ids >= 0]), minlength=uniques.size)

    per_block = np.asarray(map_blocks(ds, id_counts, names))  # (block, id)
    draws = shuffled_counts_by_block(per_block.sum(axis=0), per_block.sum(axis=1), seed)

    def counts(block):
        ids = np.asarray(block[name].values, np.int64)
        valid = ids >= 0
        routes = top1(block)[valid]
        observed = group_expert_counts(routes, np.searchsorted(uniques, ids[valid]), uniques.size, n_experts)
        shuffled_codes = shuffled_block_values(np.arange(uniques.size), draws[block.attrs["block"]], seed,
                                               block.attrs["block"])
        return observed, group_expert_counts(routes, shuffled_codes, uniques.size, n_experts)

    observed, shuffled = sum_blocks(ds, counts, names)
    return uniques, observed, shuffled


def vocabulary_specialization(
    ds: xr.Dataset, token_ids: np.ndarray | None = None, min_count: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Return, per layer and token id, the share of its occurrences sent to its most
    frequent top-1 expert (the OLMoE paper's vocabulary specialization).

    Parameters
    ----------
    token_ids : array (token,), optional
        The id each occurrence is attributed to: default the input ``token_id``; pass
        ``next_token_ids(ds)`` or predicted ids for the output-token variant. -1 skips.
    min_count : int
        Token ids with fewer occurrences are left out (their shares are noise).

    Returns
    -------
    DataFrame
        Columns layer, token_id, n_occurrences, top_expert, specialization, and
        specialization_shuffled: the same for the ids shuffled over the occurrences (seeded),
        which keeps each id's count and breaks only its link with the routing.
    """
    n_experts = int(ds.attrs["n_experts"])
    if token_ids is not None and tuple(np.shape(token_ids)) != (ds.sizes["token"],):
        raise ValueError(f"token_ids has shape {np.shape(token_ids)}, expected ({ds.sizes['token']},)")
    if is_chunked(ds):
        uniques, counts, shuffled = _vocabulary_counts_chunked(ds, token_ids, seed)
    else:
        routes = top1(ds)
        token_ids = np.asarray(ds["token_id"].values if token_ids is None else token_ids, np.int64)
        uniques, counts = _token_expert_counts(routes, token_ids, n_experts)
        shuffled_ids = token_ids.copy()
        valid = token_ids >= 0
        shuffled_ids[valid] = np.random.default_rng(seed).permutation(token_ids[valid])
        _, shuffled = _token_expert_counts(routes, shuffled_ids, n_experts)
    n_occurrences = counts[:, 0].sum(axis=-1)
    keep = n_occurrences >= min_count
    counts, shuffled, n_occurrences = counts[keep], shuffled[keep], n_occurrences[keep]
    n_ids, n_layers = counts.shape[:2]
    return pd.DataFrame(
        {
            "layer": np.tile(ds["layer"].values, n_ids),
            "token_id": np.repeat(np.asarray(uniques)[keep], n_layers),
            "n_occurrences": np.repeat(n_occurrences, n_layers),
            "top_expert": counts.argmax(axis=-1).ravel(),
            "specialization": (counts.max(axis=-1) / n_occurrences[:, None]).ravel(),
            "specialization_shuffled": (shuffled.max(axis=-1) / n_occurrences[:, None]).ravel(),
        }
    )


def vocabulary_by_kind(ds: xr.Dataset, min_count: int = 5, seed: int = 0) -> pd.DataFrame:
    """Return ``vocabulary_specialization`` stacked for each id a token's routing can be
    attributed to, told apart by a ``token_kind`` column.

    Kinds: "input token", "next token" (the true one) and, where the trace holds the
    model's predictions, "predicted next token", as the OLMoE paper measures them.
    """
    kinds = {"input token": None, "next token": next_token_ids(ds)}
    if "predicted_id" in ds:
        kinds["predicted next token"] = predicted_token_ids(ds)
    return pd.concat(
        [vocabulary_specialization(ds, ids, min_count=min_count, seed=seed).assign(token_kind=kind)
         for kind, ids in kinds.items()],
        ignore_index=True,
    )


def _first_token_strings(ds: xr.Dataset, wanted: np.ndarray) -> pd.Series:
    """Return the ``token_str`` of each wanted token id at its first occurrence, by id."""
    def strings(block):
        table = pd.Series(block["token_str"].values, index=np.asarray(block["token_id"].values, np.int64))
        table = table[table.index.isin(wanted)]
        return table[~table.index.duplicated()]

    table = pd.concat(map_blocks(ds, strings, ["token_id", "token_str"]))
    return table[~table.index.duplicated()]


def characteristic_tokens(ds: xr.Dataset, n_top: int = 10, min_count: int = 20) -> pd.DataFrame:
    """Return each expert's most characteristic input tokens per layer, by lift.

    Lift = P(token | expert) / P(token) over top-1 assignments: how much more often the
    token reaches this expert than the corpus frequency says. Tokens rarer than
    ``min_count`` are left out, since rare tokens get extreme lifts by chance.

    Returns
    -------
    DataFrame
        Columns layer, expert, rank (0 = most characteristic), token_id, token_str,
        n_routed (occurrences of the token sent to the expert), share_of_token (n_routed
        over the token's occurrences), lift.
    """
    n_experts = int(ds.attrs["n_experts"])
    if is_chunked(ds):
        uniques = _distinct_ids(ds, "token_id")
        counts = sum_blocks(ds, lambda b: group_expert_counts(
            top1(b), np.searchsorted(uniques, np.asarray(b["token_id"].values, np.int64)), uniques.size, n_experts),
            ["expert_id", "token_id"])
    else:
        token_ids = np.asarray(ds["token_id"].values, np.int64)
        uniques, counts = _token_expert_counts(top1(ds), token_ids, n_experts)  # (id, layer, expert)
    n_occurrences = counts[:, 0].sum(axis=-1)
    frequent = n_occurrences >= min_count
    counts, uniques, n_occurrences = counts[frequent], np.asarray(uniques)[frequent], n_occurrences[frequent]
    p_token = n_occurrences / ds.sizes["token"]
    per_expert = counts.sum(axis=0)  # (layer, expert)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = counts / per_expert[None] / p_token[:, None, None]
    lift = np.nan_to_num(lift, nan=0.0)
    n_top = min(n_top, lift.shape[0])
    best = np.argsort(-lift, axis=0, kind="stable")[:n_top]  # (rank, layer, expert)
    n_layers = counts.shape[1]
    rank, layer, expert = np.meshgrid(np.arange(n_top), np.arange(n_layers), np.arange(n_experts), indexing="ij")
    ids = best.ravel()
    token_str = _first_token_strings(ds, np.unique(uniques[ids]))
    table = pd.DataFrame(
        {
            "layer": ds["layer"].values[layer.ravel()],
            "expert": expert.ravel(),
            "rank": rank.ravel(),
            "token_id": uniques[ids],
            "token_str": token_str.reindex(uniques[ids]).values,
            "n_routed": counts[ids, layer.ravel(), expert.ravel()],
            "share_of_token": counts[ids, layer.ravel(), expert.ravel()] / n_occurrences[ids],
            "lift": lift[ids, layer.ravel(), expert.ravel()],
        }
    )
    return table[table["n_routed"] > 0].sort_values(["layer", "expert", "rank"], ignore_index=True)


def _pair_counts(ds: xr.Dataset, n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Return counts (layer, expert_i, expert_j) of ordered slot pairs and (layer, expert)
    of tokens holding each expert."""
    ids = expert_ids(ds).astype(np.int64)  # (token, layer, slot)
    _, n_layers, top_k = ids.shape
    base = (np.arange(n_layers, dtype=np.int64) * n_experts * n_experts)[None, :]
    pair_counts = np.zeros(n_layers * n_experts * n_experts, np.int64)
    for a in range(top_k):
        for b in range(top_k):
            if a != b:
                index = base + ids[:, :, a] * n_experts + ids[:, :, b]
                pair_counts += np.bincount(index.ravel(), minlength=pair_counts.size)
    return pair_counts.reshape(n_layers, n_experts, n_experts), layer_expert_counts(ids, n_experts)


def coactivation(ds: xr.Dataset) -> pd.DataFrame:
    """Return P(E_j | E_i) for every ordered pair of experts in a token's top-k, per layer.

    All pairs of slots count, not only adjacent ranks. ``lift`` compares with independence
    given that a token's k experts are distinct: if the other k-1 experts were drawn by
    load regardless of i, P(j | i) = q_j (k - 1) / (k - q_i), with q the share of tokens
    whose top-k holds the expert (for uniform loads (k-1)/(E-1)). ``lift_naive`` divides
    by q_j alone, as a plain P(j | i) / P(j).

    Returns
    -------
    DataFrame
        Columns layer, expert_i, expert_j, n_i (tokens with i), n_ij (tokens with both),
        p_j_given_i, p_j (q_j), lift, lift_naive. Pairs i == j are left out.
    """
    n_experts = int(ds.attrs["n_experts"])
    n_tokens, top_k = ds.sizes["token"], ds.sizes["slot"]
    pair_counts, n_with = sum_blocks(ds, lambda block: _pair_counts(block, n_experts), ["expert_id"])
    q = n_with / n_tokens
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = pair_counts / n_with[:, :, None]
        expected = q[:, None, :] * (top_k - 1) / (top_k - q[:, :, None])
        lift, lift_naive = conditional / expected, conditional / q[:, None, :]
    layer, i, j = np.meshgrid(ds["layer"].values, np.arange(n_experts), np.arange(n_experts), indexing="ij")
    table = pd.DataFrame(
        {
            "layer": layer.ravel(),
            "expert_i": i.ravel(),
            "expert_j": j.ravel(),
            "n_i": np.broadcast_to(n_with[:, :, None], pair_counts.shape).ravel(),
            "n_ij": pair_counts.ravel(),
            "p_j_given_i": conditional.ravel(),
            "p_j": np.broadcast_to(q[:, None, :], pair_counts.shape).ravel(),
            "lift": lift.ravel(),
            "lift_naive": lift_naive.ravel(),
        }
    )
    return table[table["expert_i"] != table["expert_j"]].reset_index(drop=True)
