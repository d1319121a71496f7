"""Label shuffles that keep what a null conditions on.

A permutation null must keep every count the measure conditions on, or it tests something
else: meanings are shuffled within a token id, or within a token and a source; a domain
within a token id. One function serves every analysis, so the nulls of all chapters are
drawn alike. (Its own module: the analyses that use no null need not depend on it.)
"""

from __future__ import annotations

import numpy as np


def permute_within(labels: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Return ``labels`` permuted within each group (over all rows when ``groups`` is None):
    every group keeps its own multiset of labels. The null of a label that keeps what it is
    conditioned on, e.g. meanings shuffled within a token id, or within a token and source."""
    labels = np.asarray(labels)
    if groups is None:
        return rng.permutation(labels)
    groups = np.asarray(groups)
    order = np.lexsort((rng.random(len(labels)), groups))  # rows by group, shuffled within it
    out = labels.copy()
    out[np.argsort(groups, kind="stable")] = labels[order]
    return out
