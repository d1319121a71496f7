"""Routing paths: a token's route is its top-1 expert in every MoE layer, a path is the
route over a window of consecutive MoE layers. How many paths are used, what the tokens
sharing a path have in common, and whether a path tells a token's meaning.

Windows are named by ``first_layer`` (the absolute layer index, as in the ``layer``
coordinate) and ``length`` (number of MoE layers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis.common import entropy_bits, label_codes, top1
from moe_lib.analysis.shuffles import permute_within

LABELS = ("meaning", "domain", "language")


def window_start(ds: xr.Dataset, first_layer: int | None, length: int | None) -> tuple[int, int]:
    """Return (position of first_layer along ``layer``, length), defaulting to all layers."""
    layers = list(ds["layer"].values)
    start = 0 if first_layer is None else layers.index(first_layer) if first_layer in layers else -1
    if start < 0:
        raise ValueError(f"first_layer {first_layer} is not a MoE layer of this trace; layers are {layers}")
    length = len(layers) - start if length is None else length
    if length < 1 or start + length > len(layers):
        raise ValueError(f"window of {length} layers from layer {first_layer} exceeds layers {layers}")
    return start, length


def path_codes(routes: np.ndarray, start: int, length: int, prefix: np.ndarray | None = None) -> np.ndarray:
    """Return a dense code (token,) per distinct path of ``routes[:, start:start+length]``.

    Codes are re-factorised after each layer so they stay below n_tokens and never
    overflow, whatever n_experts**length is. ``prefix`` (token,) codes are kept apart
    (e.g. token ids, so that equal paths of different tokens get different codes).
    """
    code = np.zeros(routes.shape[0], np.int64) if prefix is None else pd.factorize(prefix)[0]
    n_experts = int(routes.max()) + 1
    for column in range(start, start + length):
        code = pd.factorize(code * n_experts + routes[:, column])[0]
    return code


def path_windows(ds: xr.Dataset, max_length: int | None = None) -> pd.DataFrame:
    """Return, for every window of layers, how many paths are used and how evenly.

    Returns
    -------
    DataFrame
        Columns first_layer, length, n_tokens, n_paths_seen, n_paths_possible
        (n_experts**length as a float), n_paths_reachable (min of that and n_tokens),
        coverage_top10 and coverage_top50 (share of tokens on the most common 10 % and 50 %
        of the paths seen), entropy_bits, normalised_entropy (H / (length log2 n_experts)).
    """
    routes = top1(ds)
    n_tokens, n_layers = routes.shape
    n_experts = int(ds.attrs["n_experts"])
    layers = ds["layer"].values
    rows = []
    for start in range(n_layers):
        code = np.zeros(n_tokens, np.int64)
        for length in range(1, min(n_layers - start, max_length or n_layers) + 1):
            code = pd.factorize(code * n_experts + routes[:, start + length - 1])[0]
            counts = np.sort(np.bincount(code))[::-1]
            cumulative = np.cumsum(counts) / n_tokens
            entropy = float(entropy_bits(counts))
            possible = float(n_experts) ** length
            rows.append(
                {
                    "first_layer": layers[start],
                    "length": length,
                    "n_tokens": n_tokens,
                    "n_paths_seen": counts.size,
                    "n_paths_possible": possible,
                    "n_paths_reachable": min(possible, float(n_tokens)),
                    "coverage_top10": cumulative[int(np.ceil(0.1 * counts.size)) - 1],
                    "coverage_top50": cumulative[int(np.ceil(0.5 * counts.size)) - 1],
                    "entropy_bits": entropy,
                    "normalised_entropy": entropy / (length * np.log2(n_experts)),
                }
            )
    return pd.DataFrame(rows)


def _contexts(ds: xr.Dataset, index: np.ndarray, n_context: int) -> list[str]:
    """Return the text around each token of ``index``, the token marked with [[ ]]."""
    token_str = np.asarray(ds["token_str"].values, dtype=object)
    seq = np.asarray(ds["seq"].values)
    offsets = np.arange(-n_context, n_context + 1)
    window = np.clip(index[:, None] + offsets, 0, len(seq) - 1)
    same_text = seq[window] == seq[index][:, None]
    out = []
    for row, keep in zip(window, same_text):
        pieces = [f"[[{token_str[t]}]]" if o == 0 else str(token_str[t])
                  for t, o, k in zip(row, offsets, keep) if k]
        out.append("".join(pieces))
    return out


def path_groups(
    ds: xr.Dataset,
    first_layer: int | None = None,
    length: int | None = None,
    min_tokens: int = 20,
    labels=LABELS,
    n_examples: int = 3,
    n_context: int = 8,
    max_groups: int | None = 200,
    tokens: np.ndarray | None = None,
    seed: int = 0,
    n_shuffles: int = 50,
) -> pd.DataFrame:
    """Return the groups of tokens that share a path, with what their tokens have in common.

    Parameters
    ----------
    first_layer, length : int, optional
        The window (absolute first layer, number of layers); default every layer.
    min_tokens : int
        Smallest group reported.
    labels : sequence of str
        Token labels whose purity is reported, those the trace has.
    max_groups : int, optional
        Report only this many of the largest groups.
    tokens : bool array (token,), optional
        Group only these tokens (e.g. ``is_target``); contexts still come from the whole
        trace, which a subset Dataset would lose.

    Returns
    -------
    DataFrame
        One row per group, largest first: path (experts joined by "-"), n_tokens,
        n_token_ids, token_id_entropy_bits, top_token (most common token_str), for each
        label ``<label>_top`` (most common value), ``<label>_purity`` (its share of the
        group's labelled tokens), ``<label>_n`` (labelled tokens) and two nulls, the mean
        purity of the same group over ``n_shuffles`` shuffles of the label: over all tokens
        (``<label>_purity_null``: a random group of the same size, since small groups are
        purer by chance) and within each token id (``<label>_purity_token_null``: what the
        tokens' identities alone give, as routing mostly follows them); and examples (a
        list of ``n_examples`` contexts with the token marked [[ ]]).
    """
    start, length = window_start(ds, first_layer, length)
    selected = np.arange(ds.sizes["token"]) if tokens is None else np.flatnonzero(np.asarray(tokens, bool))
    routes = top1(ds)[selected]
    code = path_codes(routes, start, length)
    sizes = np.bincount(code)
    groups = np.flatnonzero(sizes >= min_tokens)
    groups = groups[np.argsort(-sizes[groups], kind="stable")][:max_groups]
    rank = np.full(sizes.size, -1)
    rank[groups] = np.arange(groups.size)
    member = np.flatnonzero(rank[code] >= 0)
    group = rank[code[member]]
    representative = member[np.unique(group, return_index=True)[1]]

    position = selected[member]  # index of each member in ds
    token_ids = np.asarray(ds["token_id"].values)[position]
    pairs = pd.DataFrame({"group": group, "token_id": token_ids}).value_counts().rename("n")
    pairs = pairs.reset_index()
    table = pd.DataFrame(
        {
            "path": ["-".join(map(str, r)) for r in routes[representative, start:start + length]],
            "n_tokens": sizes[groups],
            "n_token_ids": pairs.groupby("group").size().values,
            "token_id_entropy_bits": pairs.groupby("group")["n"].apply(entropy_bits).values,
        }
    )
    top_pair = pairs.sort_values(["group", "n"], ascending=[True, False]).drop_duplicates("group")
    token_str = pd.Series(ds["token_str"].values, index=ds["token_id"].values)
    token_str = token_str[~token_str.index.duplicated()]
    table["top_token"] = token_str.reindex(top_pair["token_id"].values).values
    for name in labels:
        if name not in ds.coords:
            continue
        values, uniques = label_codes(ds, name)
        values = values[position]
        labelled = values >= 0
        counts = np.bincount(group[labelled] * len(uniques) + values[labelled],
                             minlength=groups.size * max(len(uniques), 1))
        counts = counts.reshape(groups.size, max(len(uniques), 1))
        n_labelled = counts.sum(axis=1)
        table[f"{name}_top"] = np.where(n_labelled > 0, np.asarray(uniques, object)[counts.argmax(axis=1)]
                                        if len(uniques) else None, None)
        table[f"{name}_purity"] = _purity(group[labelled], values[labelled], groups.size, len(uniques))
        table[f"{name}_n"] = n_labelled
        shuffle_rng = np.random.default_rng(seed)
        for column, within in ((f"{name}_purity_null", None), (f"{name}_purity_token_null", token_ids[labelled])):
            table[column] = np.mean([
                _purity(group[labelled], _shuffled(values[labelled], within, shuffle_rng), groups.size, len(uniques))
                for _ in range(n_shuffles)], axis=0)
    # A seeded random key per member, then the first n_examples of each group.
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(member.size), group))
    first = pd.Series(group[order]).groupby(group[order]).cumcount().values < n_examples
    picked = position[order][first]
    contexts = pd.Series(_contexts(ds, picked, n_context)).groupby(group[order][first]).agg(list)
    table["examples"] = contexts.reindex(np.arange(groups.size)).values
    return table


def _purity(group: np.ndarray, values: np.ndarray, n_groups: int, n_values: int) -> np.ndarray:
    """Return each group's share of its most common label value (NaN for an unlabelled group)."""
    counts = np.bincount(group * max(n_values, 1) + values, minlength=n_groups * max(n_values, 1))
    counts = counts.reshape(n_groups, max(n_values, 1))
    n = counts.sum(axis=1)
    return np.divide(counts.max(axis=1), n, out=np.full(n_groups, np.nan), where=n > 0)


def _shuffled(values: np.ndarray, within: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Return ``values`` permuted over all tokens, or within each value of ``within``."""
    if within is None:
        return rng.permutation(values)
    out = values.copy()
    order = np.argsort(within, kind="stable")
    bounds = np.flatnonzero(np.diff(within[order])) + 1
    for rows in np.split(order, bounds):
        out[rows] = values[rng.permutation(rows)]
    return out


def paths_to_cover(
    ds: xr.Dataset,
    label: str = "domain",
    shares=(0.8, 0.95),
    first_layer: int | None = None,
    length: int | None = None,
) -> pd.DataFrame:
    """Return, per value of ``label``, how many distinct paths cover the given token shares.

    Returns
    -------
    DataFrame
        Columns <label>, n_tokens, n_paths_seen, and n_paths_<pct> for each share (the
        fewest distinct paths, most common first, that hold that share of its tokens).
    """
    start, length = window_start(ds, first_layer, length)
    code = path_codes(top1(ds), start, length)
    values, uniques = label_codes(ds, label)
    rows = []
    for index, value in enumerate(uniques):
        counts = np.sort(np.bincount(code[values == index]))[::-1]
        counts = counts[counts > 0]
        cumulative = np.cumsum(counts) / counts.sum()
        row = {label: value, "n_tokens": int(counts.sum()), "n_paths_seen": counts.size}
        for share in shares:
            # The tolerance keeps a share reached exactly (0.8 of 10 tokens) from rounding up.
            row[f"n_paths_{round(share * 100)}"] = int(np.searchsorted(cumulative, share - 1e-12) + 1)
        rows.append(row)
    return pd.DataFrame(rows)


def _majority_guess(code: np.ndarray, target: np.ndarray, owner: np.ndarray, train: np.ndarray,
                    test: np.ndarray) -> np.ndarray:
    """Return the guesses for the ``test`` rows: the most common ``target`` among the
    ``train`` rows of the same ``code``; a code unseen in training falls back to the owner's
    (token's) most common target."""
    n_codes, n_targets, n_owners = code.max() + 1, target.max() + 1, owner.max() + 1
    by_code = np.bincount(code[train] * n_targets + target[train], minlength=n_codes * n_targets)
    by_code = by_code.reshape(n_codes, n_targets)
    by_owner = np.bincount(owner[train] * n_targets + target[train], minlength=n_owners * n_targets)
    fallback = by_owner.reshape(n_owners, n_targets).argmax(axis=1)
    seen = by_code.sum(axis=1) > 0
    return np.where(seen[code[test]], by_code.argmax(axis=1)[code[test]], fallback[owner[test]])


def _fold_accuracy(code: np.ndarray, target: np.ndarray, owner: np.ndarray, fold: np.ndarray) -> float:
    """Return the cross-validated accuracy of :func:`_majority_guess` over the folds."""
    correct = 0
    for k in np.unique(fold):
        train, test = fold != k, fold == k
        correct += int((_majority_guess(code, target, owner, train, test) == target[test]).sum())
    return correct / code.size


def _labelled_targets(ds: xr.Dataset, minimum: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the top-1 routes, meaning codes and token codes (owners) of the target
    occurrences that carry a meaning; raise if fewer than ``minimum``."""
    target = np.asarray(ds["is_target"].values, dtype=bool) if "is_target" in ds.coords else None
    if target is None:
        raise KeyError(f"trace of model {ds.attrs.get('model')!r} has no token label 'is_target'")
    meaning, _ = label_codes(ds, "meaning")
    rows_kept = np.flatnonzero(target & (meaning >= 0))
    if rows_kept.size < minimum:
        raise ValueError(f"only {rows_kept.size} labelled target occurrences, fewer than the {minimum} folds need")
    owner = pd.factorize(np.asarray(ds["token_id"].values)[rows_kept])[0]
    return top1(ds)[rows_kept], meaning[rows_kept], owner


def meaning_prediction(
    ds: xr.Dataset,
    max_length: int | None = None,
    n_folds: int = 5,
    n_shuffles: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Return how well a polysemantic token's path predicts its meaning, per window.

    Uses the rows with ``is_target`` True and a ``meaning``. The predictor is a majority
    vote of the meanings seen on the same path (within the same token id) in the training
    folds; unseen paths get the token's majority meaning. Windows of length 1 are the
    single-layer expert. The shuffled baseline permutes meanings within each token id.

    Returns
    -------
    DataFrame
        Columns first_layer, length, predictor ("single layer" or "path"), accuracy,
        accuracy_shuffled (mean over shuffles), majority_share (accuracy of always guessing
        the token's most common meaning), n_occurrences, n_paths_seen.
    """
    routes, meaning, owner = _labelled_targets(ds, n_folds)
    rng = np.random.default_rng(seed)
    fold = rng.permutation(meaning.size) % n_folds
    shuffled = [permute_within(meaning, owner, rng) for _ in range(n_shuffles)]
    majority = pd.crosstab(owner, meaning).values.max(axis=1).sum() / meaning.size
    layers = ds["layer"].values
    n_layers = routes.shape[1]
    rows = []
    for start in range(n_layers):
        for length in range(1, min(n_layers - start, max_length or n_layers) + 1):
            code = path_codes(routes, start, length, prefix=owner)
            rows.append(
                {
                    "first_layer": layers[start],
                    "length": length,
                    "predictor": "single layer" if length == 1 else "path",
                    "accuracy": _fold_accuracy(code, meaning, owner, fold),
                    "accuracy_shuffled": float(np.mean(
                        [_fold_accuracy(code, s, owner, fold) for s in shuffled])),
                    "majority_share": majority,
                    "n_occurrences": meaning.size,
                    "n_paths_seen": int(code.max() + 1),
                }
            )
    return pd.DataFrame(rows)


def meaning_prediction_nested(
    ds: xr.Dataset,
    n_outer: int = 5,
    n_inner: int = 4,
    n_shuffles: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Return the meaning-from-route accuracy of the best single layer and of the best path
    window, each chosen on inner folds and scored on outer ones (nested cross-validation).

    :func:`meaning_prediction` scores every window on the same folds; the best of many
    windows is then biased upwards, more so for the predictor with more windows to choose
    from (paths). Here, in each outer fold, every window of a predictor is scored by
    ``n_inner``-fold cross-validation on the outer training rows only; the best is refitted
    on them and scored on the held-out outer fold. Predictors, folds and baselines as
    :func:`meaning_prediction`; the shuffled baseline runs the same nested procedure on
    meanings permuted within each token id.

    Returns
    -------
    DataFrame
        Columns predictor ("single layer", "path"), accuracy (pooled over the outer folds),
        accuracy_shuffled (mean over shuffles), majority_share, chosen (the window chosen in
        each outer fold, "first_layer+length", joined by spaces), n_windows, n_occurrences.
    """
    routes, meaning, owner = _labelled_targets(ds, n_outer * n_inner)
    rng = np.random.default_rng(seed)
    outer = rng.permutation(meaning.size) % n_outer
    inner = rng.permutation(meaning.size) % n_inner  # within an outer training set, its folds
    n_layers = routes.shape[1]
    windows = [(start, length) for start in range(n_layers) for length in range(1, n_layers - start + 1)]
    codes = {w: path_codes(routes, w[0], w[1], prefix=owner) for w in windows}
    by_predictor = {"single layer": [w for w in windows if w[1] == 1], "path": [w for w in windows if w[1] > 1]}

    def nested(labels: np.ndarray, candidates: list) -> tuple[float, list]:
        correct, chosen = 0, []
        for k in range(n_outer):
            train, test = outer != k, outer == k
            scores = [_fold_accuracy(codes[w][train], labels[train], owner[train], inner[train]) for w in candidates]
            best = candidates[int(np.argmax(scores))]
            correct += int((_majority_guess(codes[best], labels, owner, train, test) == labels[test]).sum())
            chosen.append(best)
        return correct / labels.size, chosen

    shuffled = [permute_within(meaning, owner, rng) for _ in range(n_shuffles)]
    majority = pd.crosstab(owner, meaning).values.max(axis=1).sum() / meaning.size
    layers = ds["layer"].values
    rows = []
    for predictor, candidates in by_predictor.items():
        if not candidates:
            continue
        accuracy, chosen = nested(meaning, candidates)
        rows.append({
            "predictor": predictor, "accuracy": accuracy,
            "accuracy_shuffled": float(np.mean([nested(s, candidates)[0] for s in shuffled])),
            "majority_share": majority,
            "chosen": " ".join(f"{layers[start]}+{length}" for start, length in chosen),
            "n_windows": len(candidates), "n_occurrences": int(meaning.size),
        })
    return pd.DataFrame(rows)
