"""What decides the expert, in one unit: mutual information in bits, each beside its own null.

Token identity, meaning and source (the document's genre) are tangled in the polysemantic
probe: a token's meanings often come from different sources, so "meaning decides the
expert" can be genre. Measured on the same target occurrences, per layer, for the top-1
expert E, token T, meaning M and source S:

- ``I(E; T)``: how much the token's identity tells of its expert;
- ``I(E; M | T)``: how much its meaning adds, given the token;
- ``I(E; S | T)``: how much its source adds, given the token;
- ``I(E; M | T, S)``: what meaning adds within one token and one source, the effect net of
  source (only tokens with two meanings in one source contribute).

Plug-in estimates of mutual information are biased upwards on small samples, so each is
set against a permutation null that keeps every count it conditions on: T shuffled over
occurrences; M shuffled within T; S shuffled within T; M shuffled within (T, S). The
``excess`` (observed minus the null's mean) is what the label explains beyond chance.

In a causal model an occurrence's route can depend on its meaning only through the text
before it. A probe snippet that opens with the target (only whitespace before it) gives
the router nothing to read the meaning from, so :func:`expert_information_by_context`
measures the same quantities apart for occurrences with and without left context.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis.common import top1
from moe_lib.analysis.shuffles import permute_within
from moe_lib.analysis.crosslayer import corpus_source, target_occurrences


def codes(values) -> np.ndarray:
    """Return integer codes 0..n-1 of any labels (strings, numbers), in order of first sorting."""
    # str() of each value: labels may come as numpy's StringDType, object or numbers
    text = np.array([str(v) for v in np.asarray(values).tolist()], dtype=object)
    return np.unique(text, return_inverse=True)[1].astype(np.int64)


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Return the plug-in mutual information of two integer label arrays, in bits."""
    if len(x) == 0:
        return 0.0
    n_x, n_y = int(x.max()) + 1, int(y.max()) + 1
    joint = np.bincount(x * n_y + y, minlength=n_x * n_y).reshape(n_x, n_y) / len(x)
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log2(joint[nonzero] / (px @ py)[nonzero])).sum())


def conditional_mutual_information(x: np.ndarray, y: np.ndarray, given: np.ndarray) -> float:
    """Return I(x; y | given) = sum over groups g of P(g) I(x; y | given = g), in bits."""
    total, n = 0.0, len(x)
    for group in np.unique(given):
        rows = given == group
        total += rows.sum() / n * mutual_information(x[rows], y[rows])
    return total


def _with_null(observed_fn, shuffle_fn, n_perm: int, rng: np.random.Generator) -> dict:
    null = np.array([observed_fn(shuffle_fn(rng)) for _ in range(n_perm)])
    observed = observed_fn(None)
    return {"bits": observed, "null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)),
            "excess": observed - float(null.mean()), "p": float((1 + (null >= observed).sum()) / (1 + n_perm))}


def expert_information(ds: xr.Dataset, n_perm: int = 200, seed: int = 0) -> pd.DataFrame:
    """Return, per layer, I(E; T), I(E; M | T), I(E; S | T) and I(E; M | T, S) in bits over
    the target occurrences of a contextual trace, each with its permutation null.

    Returns
    -------
    pandas.DataFrame
        Columns ``layer``, ``measure`` (e.g. ``"I(E; M | T)"``), ``bits``, ``null_mean``,
        ``null_q95``, ``excess`` (bits minus the null's mean), ``p`` (one-sided permutation
        p-value), ``n_occurrences``.
    """
    occ = target_occurrences(ds)
    experts = top1(occ)  # (token, layer)
    token = codes(occ["token_id"].values)
    meaning = codes([f"{t}\0{m}" for t, m in zip(occ["token_id"].values, occ["meaning"].values)])
    source = codes(corpus_source(occ["source"].values))  # the genre, not the sample's own place
    token_source = codes([f"{t}\0{s}" for t, s in zip(token, source)])
    rows = []
    for index, layer in enumerate(occ["layer"].values):
        expert = experts[:, index].astype(np.int64)
        rng = np.random.default_rng(seed)
        measures = {
            "I(E; T)": (lambda lab: mutual_information(expert, token if lab is None else lab),
                        lambda r: permute_within(token, None, r)),
            "I(E; M | T)": (lambda lab: conditional_mutual_information(expert, meaning if lab is None else lab, token),
                            lambda r: permute_within(meaning, token, r)),
            "I(E; S | T)": (lambda lab: conditional_mutual_information(expert, source if lab is None else lab, token),
                            lambda r: permute_within(source, token, r)),
            "I(E; M | T, S)": (lambda lab: conditional_mutual_information(
                                   expert, meaning if lab is None else lab, token_source),
                               lambda r: permute_within(meaning, token_source, r)),
        }
        for measure, (observed_fn, shuffle_fn) in measures.items():
            rows.append({"layer": int(layer), "measure": measure, **_with_null(observed_fn, shuffle_fn, n_perm, rng),
                         "n_occurrences": len(expert)})
    return pd.DataFrame(rows)


def left_context_tokens(ds: xr.Dataset) -> np.ndarray:
    """Return, for every token row, how many tokens before it in its sequence are more
    than whitespace: 0 where the model has read nothing that could carry a meaning."""
    seq = np.asarray(ds["seq"].values)
    pos = np.asarray(ds["pos"].values)
    contentful = np.array([bool(str(t).strip()) for t in np.asarray(ds["token_str"].values).tolist()])
    order = np.lexsort((pos, seq))
    counts = np.zeros(len(seq), dtype=np.int64)
    sorted_seq, sorted_content = seq[order], contentful[order].astype(np.int64)
    # a running count of contentful tokens within each sequence, excluding the token itself
    running = np.cumsum(sorted_content) - sorted_content
    starts = np.r_[0, np.flatnonzero(sorted_seq[1:] != sorted_seq[:-1]) + 1]
    offsets = np.repeat(running[starts], np.diff(np.r_[starts, len(seq)]))
    counts[order] = running - offsets
    return counts


def expert_information_by_context(ds: xr.Dataset, n_perm: int = 200, seed: int = 0) -> pd.DataFrame:
    """Return :func:`expert_information` apart for the target occurrences with no left
    context (nothing but whitespace before them in their sample) and with some, told apart
    by a ``context`` column ("none", "some"); a group with no occurrence is left out."""
    has_context = left_context_tokens(ds) > 0
    target = np.asarray(ds["is_target"].values, dtype=bool)
    parts = []
    for name, rows in (("none", target & ~has_context), ("some", target & has_context)):
        if rows.any():
            subset = ds.isel(token=np.flatnonzero(rows | ~target))  # every non-target row kept as it is
            parts.append(expert_information(subset, n_perm=n_perm, seed=seed).assign(context=name))
    return pd.concat(parts, ignore_index=True)
