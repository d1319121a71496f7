"""Cross-layer routing of polysemantic tokens: how a token's top-1 expert flows from layer to
layer per meaning, whether meanings or the token id decide the experts (Jensen-Shannon
distances with permutation baselines), and how predictable layer l+1's expert is from
layer l's (normalised mutual information with a shuffled baseline).

A polysemantic token's occurrences are the rows with ``is_target`` True, labelled by
``meaning``; a trace may hold several such tokens, told apart by ``token_id``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis.common import (
    entropy_bits,
    expert_ids,
    group_expert_counts,
    js_distance,
    label_codes,
    layer_expert_counts,
    top1,
)
from moe_lib.analysis.shuffles import permute_within


def target_occurrences(ds: xr.Dataset, token_id: int | None = None) -> xr.Dataset:
    """Return the rows of ``ds`` with ``is_target`` True (and the given ``token_id``)."""
    if "is_target" not in ds.coords:
        raise KeyError(f"trace of model {ds.attrs.get('model')!r} has no token label 'is_target'")
    mask = np.asarray(ds["is_target"].values, dtype=bool)
    if token_id is not None:  # a new array: ``&=`` would write through into ds's labels
        mask = mask & (np.asarray(ds["token_id"].values) == token_id)
    if not mask.any():
        raise ValueError(
            f"trace of model {ds.attrs.get('model')!r}: no target occurrences"
            + ("" if token_id is None else f" of token_id {token_id}")
        )
    return ds.isel(token=np.flatnonzero(mask))


def corpus_source(locations) -> np.ndarray:
    """Return the corpus source of each sample: the part of its ``source`` label before the
    first colon ("sotu:1863-lincoln:line 4 [validation]" gives "sotu"). The label names the
    sample's place, one sentence or line; the corpus source is the genre a meaning can be
    confounded with (speeches, the dictionary, kernel documentation, ...)."""
    return np.array([str(v).split(":", 1)[0] for v in np.asarray(locations).tolist()], dtype=object)


def one_token_occurrences(ds: xr.Dataset, token_id: int | None) -> xr.Dataset:
    """Return the target occurrences of one token; without ``token_id`` the trace's
    targets must all be the same token, since pooling several would mix their meanings."""
    occ = target_occurrences(ds, token_id)
    ids = np.unique(occ["token_id"].values)
    if ids.size > 1:
        raise ValueError(
            f"trace of model {ds.attrs.get('model')!r}: targets hold {ids.size} token ids "
            f"({ids[:10].tolist()}...); pass token_id= to choose one"
        )
    return occ


def meaning_flow(ds: xr.Dataset, token_id: int | None = None) -> pd.DataFrame:
    """Return counts of top-1 expert transitions between consecutive layers, per meaning.

    Returns
    -------
    DataFrame
        Columns meaning, layer, next_layer, expert, next_expert, n_tokens, share (of the
        meaning's occurrences), for every transition seen, over the target occurrences.
    """
    occ = one_token_occurrences(ds, token_id)
    routes = top1(occ)  # (token, layer)
    meaning, meanings = label_codes(occ, "meaning")
    n_experts, layers = int(ds.attrs["n_experts"]), occ["layer"].values
    keep = meaning >= 0
    routes, meaning = routes[keep], meaning[keep]
    n_meanings, n_per_meaning = len(meanings), np.bincount(meaning, minlength=len(meanings))
    tables = []
    for index in range(len(layers) - 1):
        code = (meaning * n_experts + routes[:, index]) * n_experts + routes[:, index + 1]
        counts = np.bincount(code, minlength=n_meanings * n_experts * n_experts)
        seen = np.flatnonzero(counts)
        m, rest = np.divmod(seen, n_experts * n_experts)
        tables.append(
            pd.DataFrame(
                {
                    "meaning": meanings[m],
                    "layer": layers[index],
                    "next_layer": layers[index + 1],
                    "expert": rest // n_experts,
                    "next_expert": rest % n_experts,
                    "n_tokens": counts[seen],
                    "share": counts[seen] / n_per_meaning[m],
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


def _context_js(counts: np.ndarray) -> np.ndarray:
    """Return the mean over meanings of JS(meaning, pooled), per layer, from counts
    (meaning, layer, expert); meanings without occurrences are skipped."""
    pooled = counts.sum(axis=0, keepdims=True)
    present = counts.sum(axis=(1, 2)) > 0
    return js_distance(counts[present], np.broadcast_to(pooled, counts[present].shape)).mean(axis=0)


def specialization_js(
    ds: xr.Dataset,
    token_id: int | None = None,
    n_slots: int | None = 1,
    n_permutations: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Return per layer the context and token-id specialization of a polysemantic token.

    Context specialization: the mean over meanings of the Jensen-Shannon distance (base 2)
    between the meaning's expert distribution and the token's pooled one. Its baseline
    shuffles the meaning labels among the token's occurrences (seeded), which keeps the
    meanings' sizes, so it measures what finite samples give by chance.
    Token-id specialization: the JS distance between the token's expert distribution and
    that of every token in the trace; its baseline draws as many random tokens of the trace.

    Parameters
    ----------
    n_slots : int, optional
        1 (default) uses top-1 experts; None uses every top-k slot.
    n_permutations : int
        Number of shuffles / random draws for the baselines.

    Returns
    -------
    DataFrame
        Columns layer, n_occurrences, n_meanings, context_js, context_js_shuffled (mean over
        shuffles), context_js_shuffled_q95, context_p_value, context_js_source_shuffled and its
        _q95 (meanings shuffled within each source: the source-matched null; NaN without a
        ``source`` label), token_js, token_js_random,
        token_js_random_q95, token_p_value. P-values are (1 + #baseline >= observed) /
        (1 + n_permutations).
    """
    rng = np.random.default_rng(seed)
    n_experts = int(ds.attrs["n_experts"])
    occ = one_token_occurrences(ds, token_id)
    meaning, meanings = label_codes(occ, "meaning")
    keep = meaning >= 0
    ids = expert_ids(occ, n_slots)[keep]  # (occurrence, layer, slot)
    meaning = meaning[keep]
    n_meanings = len(meanings)
    counts = group_expert_counts(ids, meaning, n_meanings, n_experts)
    context = _context_js(counts)
    shuffled = np.stack(
        [
            _context_js(group_expert_counts(ids, rng.permutation(meaning), n_meanings, n_experts))
            for _ in range(n_permutations)
        ]
    )  # (permutation, layer)

    all_ids = expert_ids(ds, n_slots)
    global_counts = layer_expert_counts(all_ids, n_experts)
    token_counts = counts.sum(axis=0)
    token = js_distance(token_counts, global_counts)
    n_occ = ids.shape[0]
    random = np.stack(
        [
            js_distance(
                layer_expert_counts(all_ids[rng.choice(all_ids.shape[0], n_occ, replace=False)], n_experts),
                global_counts,
            )
            for _ in range(n_permutations)
        ]
    )
    # Source-matched null: meanings shuffled only among occurrences of the same corpus source,
    # so whatever routing follows the source (genre) is kept and only meaning within it broken.
    source = corpus_source(occ["source"].values)[keep] if "source" in occ.coords else None
    by_source = (np.stack([_context_js(group_expert_counts(ids, permute_within(meaning, source, rng), n_meanings,
                                                           n_experts)) for _ in range(n_permutations)])
                 if source is not None else np.full((1, len(context)), np.nan))
    return pd.DataFrame(
        {
            "layer": occ["layer"].values,
            "n_occurrences": n_occ,
            "n_meanings": int((np.bincount(meaning, minlength=n_meanings) > 0).sum()),
            "context_js": context,
            "context_js_shuffled": shuffled.mean(axis=0),
            "context_js_shuffled_q95": np.quantile(shuffled, 0.95, axis=0),
            "context_p_value": (1 + (shuffled >= context).sum(axis=0)) / (1 + n_permutations),
            "context_js_source_shuffled": by_source.mean(axis=0),
            "context_js_source_shuffled_q95": np.quantile(by_source, 0.95, axis=0),
            "token_js": token,
            "token_js_random": random.mean(axis=0),
            "token_js_random_q95": np.quantile(random, 0.95, axis=0),
            "token_p_value": (1 + (random >= token).sum(axis=0)) / (1 + n_permutations),
        }
    )


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, n_values: int) -> float:
    """Return the NMI of two integer label arrays, 2 I(a;b) / (H(a) + H(b)), in [0, 1].

    Returns 0 when both arrays are constant (nothing to predict).
    """
    joint = np.bincount(a.astype(np.int64) * n_values + b, minlength=n_values * n_values)
    joint = joint.reshape(n_values, n_values)
    h_a, h_b = entropy_bits(joint.sum(axis=1)), entropy_bits(joint.sum(axis=0))
    mutual = h_a + h_b - entropy_bits(joint.ravel())
    return float(2 * mutual / (h_a + h_b)) if h_a + h_b > 0 else 0.0


def expert_continuity(ds: xr.Dataset, n_permutations: int = 5, seed: int = 0) -> pd.DataFrame:
    """Return how predictable each layer's top-1 expert is from the previous layer's.

    Uses every token of ``ds`` (pass ``target_occurrences(ds)`` for a polysemantic token).
    The baseline shuffles layer l+1's experts across tokens (seeded), which keeps both
    layers' loads and breaks only the pairing; small samples give it a positive NMI.

    Returns
    -------
    DataFrame
        Columns layer, next_layer, nmi, nmi_shuffled (mean over shuffles),
        nmi_shuffled_q95, p_same_index (share of tokens whose top-1 expert index is the same
        in both layers; indices are arbitrary per layer unless the model ties them),
        p_same_index_chance (sum_e p_e p'_e from the two layers' loads), n_tokens.
    """
    rng = np.random.default_rng(seed)
    n_experts = int(ds.attrs["n_experts"])
    routes = top1(ds)
    layers = ds["layer"].values
    n_tokens = routes.shape[0]
    loads = layer_expert_counts(routes, n_experts) / n_tokens
    rows = []
    for index in range(len(layers) - 1):
        here, there = routes[:, index], routes[:, index + 1]
        shuffled = [
            normalised_mutual_information(here, rng.permutation(there), n_experts)
            for _ in range(n_permutations)
        ]
        rows.append(
            {
                "layer": layers[index],
                "next_layer": layers[index + 1],
                "nmi": normalised_mutual_information(here, there, n_experts),
                "nmi_shuffled": float(np.mean(shuffled)),
                "nmi_shuffled_q95": float(np.quantile(shuffled, 0.95)),
                "p_same_index": float((here == there).mean()),
                "p_same_index_chance": float((loads[index] * loads[index + 1]).sum()),
                "n_tokens": n_tokens,
            }
        )
    return pd.DataFrame(rows)
