"""Polysemantic occurrences read inside their documents (issue 12, item 2).

Traced alone, a snippet gives the router a few words at most to read a meaning from, and
none at all where the snippet opens with its target. The ``in-document`` probe traces the
same samples after at least 64 tokens of their documents' preceding text, so the measures
of :mod:`moe_lib.analysis.information` can be read on the same occurrences with and without
context. Two groups matter:

- the occurrences that open their sample (only whitespace before the target): alone, their
  routes cannot depend on meaning; in their documents they can;
- every other occurrence, which had some words before it already.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis import information

OPENING_GROUPS = ("opens its sample", "after text in its sample")


def information_by_opening(ds: xr.Dataset, n_perm: int = 200, seed: int = 0) -> pd.DataFrame:
    """Return :func:`information.expert_information` apart for the target occurrences that
    open their sample and the others (the ``opens_sample`` label of the in-document probe),
    told apart by a ``group`` column (:data:`OPENING_GROUPS`); an empty group is left out."""
    target = np.asarray(ds["is_target"].values, dtype=bool)
    opens = np.asarray(ds["opens_sample"].values, dtype=bool)
    parts = []
    for name, rows in zip(OPENING_GROUPS, (target & opens, target & ~opens)):
        if rows.any():
            subset = ds.isel(token=np.flatnonzero(rows))
            parts.append(information.expert_information(subset, n_perm=n_perm, seed=seed).assign(group=name))
    return pd.concat(parts, ignore_index=True)


def context_lengths(ds: xr.Dataset, min_tokens: int = 64) -> pd.DataFrame:
    """Return one row describing how much each target occurrence has read before it:
    occurrences, those opening their sample, those with fewer than ``min_tokens`` tokens
    before them, those with nothing but whitespace before them, and the median length."""
    target = np.asarray(ds["is_target"].values, dtype=bool)
    before = np.asarray(ds["context_tokens"].values)[target]
    contentful = information.left_context_tokens(ds)[target]
    return pd.DataFrame([{
        "n_occurrences": int(target.sum()),
        "n_opening_sample": int(np.asarray(ds["opens_sample"].values, dtype=bool)[target].sum()),
        "n_short_context": int((before < min_tokens).sum()),
        "n_no_context": int((contentful == 0).sum()),
        "median_context_tokens": float(np.median(before)) if len(before) else np.nan,
    }])
