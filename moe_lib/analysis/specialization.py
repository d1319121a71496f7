"""Expert specialization as the OLMoE paper measures it: domain shares against the uniform
k/E, total-variation distance of each domain from the pooled routing, vocabulary
specialization, each expert's most characteristic tokens, and co-activation.

Unless ``n_slots`` says otherwise, every top-k slot counts as an assignment.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

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
    ids = expert_ids(ds, n_slots)
    codes, values = label_codes(ds, label)
    counts = group_expert_counts(ids, codes, len(values), n_experts)  # (value, layer, expert)
    n_tokens = np.bincount(codes[codes >= 0], minlength=len(values))
    n_values, n_layers, _ = counts.shape
    uniform = ids.shape[2] / n_experts
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
    rng = np.random.default_rng(seed)
    n_experts = int(ds.attrs["n_experts"])
    ids = expert_ids(ds, n_slots)
    codes, values = label_codes(ds, label)
    tv = _tv(group_expert_counts(ids, codes, len(values), n_experts))  # (value, layer)
    shuffled = np.stack(
        [_tv(group_expert_counts(ids, rng.permutation(codes), len(values), n_experts))
         for _ in range(n_permutations)]
    )
    n_layers = tv.shape[1]
    return pd.DataFrame(
        {
            "layer": np.tile(ds["layer"].values, len(values)),
            label: np.repeat(np.asarray(values, object), n_layers),
            "n_tokens": np.repeat(np.bincount(codes[codes >= 0], minlength=len(values)), n_layers),
            "tv_distance": tv.ravel(),
            "tv_shuffled": shuffled.mean(axis=0).ravel(),
            "tv_shuffled_q95": np.quantile(shuffled, 0.95, axis=0).ravel(),
        }
    )


def next_token_ids(ds: xr.Dataset) -> np.ndarray:
    """Return the id of the next token in the same text (token,), -1 at a text's end."""
    seq, pos = np.asarray(ds["seq"].values), np.asarray(ds["pos"].values)
    token_id = np.asarray(ds["token_id"].values)
    out = np.full(token_id.shape, -1, dtype=np.int64)
    follows = (seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1] + 1)
    out[:-1][follows] = token_id[1:][follows]
    return out


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
    return np.asarray(ds["predicted_id"].values, np.int64)


def _token_expert_counts(routes: np.ndarray, token_ids: np.ndarray, n_experts: int):
    """Return (unique token ids, counts (token id, layer, expert)) of top-1 routes;
    negative ids are left out."""
    keep = token_ids >= 0
    codes, uniques = pd.factorize(token_ids[keep], sort=True)
    return uniques, group_expert_counts(routes[keep], codes, len(uniques), n_experts)


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
    routes = top1(ds)
    token_ids = np.asarray(ds["token_id"].values if token_ids is None else token_ids, np.int64)
    if token_ids.shape != (routes.shape[0],):
        raise ValueError(f"token_ids has shape {token_ids.shape}, expected ({routes.shape[0]},)")
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
    token_ids = np.asarray(ds["token_id"].values, np.int64)
    uniques, counts = _token_expert_counts(top1(ds), token_ids, n_experts)  # (id, layer, expert)
    n_occurrences = counts[:, 0].sum(axis=-1)
    frequent = n_occurrences >= min_count
    counts, uniques, n_occurrences = counts[frequent], np.asarray(uniques)[frequent], n_occurrences[frequent]
    p_token = n_occurrences / token_ids.size
    per_expert = counts.sum(axis=0)  # (layer, expert)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = counts / per_expert[None] / p_token[:, None, None]
    lift = np.nan_to_num(lift, nan=0.0)
    n_top = min(n_top, lift.shape[0])
    best = np.argsort(-lift, axis=0, kind="stable")[:n_top]  # (rank, layer, expert)
    n_layers = counts.shape[1]
    rank, layer, expert = np.meshgrid(np.arange(n_top), np.arange(n_layers), np.arange(n_experts), indexing="ij")
    ids = best.ravel()
    token_str = pd.Series(ds["token_str"].values, index=token_ids)
    token_str = token_str[~token_str.index.duplicated()]
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
    ids = expert_ids(ds).astype(np.int64)  # (token, layer, slot)
    n_tokens, n_layers, top_k = ids.shape
    base = (np.arange(n_layers, dtype=np.int64) * n_experts * n_experts)[None, :]
    pair_counts = np.zeros(n_layers * n_experts * n_experts, np.int64)
    for a in range(top_k):
        for b in range(top_k):
            if a != b:
                index = base + ids[:, :, a] * n_experts + ids[:, :, b]
                pair_counts += np.bincount(index.ravel(), minlength=pair_counts.size)
    pair_counts = pair_counts.reshape(n_layers, n_experts, n_experts)
    n_with = layer_expert_counts(ids, n_experts)  # (layer, expert)
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
