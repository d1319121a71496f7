"""The contextual measures read on the same occurrences alone and inside their documents
(issue 12, item 2): the tables the cross-layer chapter sets side by side."""

from __future__ import annotations

import pandas as pd

MEANING_MEASURES = ("I(E; M | T)", "I(E; S | T)", "I(E; M | T, S)")


def alone_and_in_document(alone: pd.DataFrame, in_document: pd.DataFrame,
                          measures=MEANING_MEASURES) -> pd.DataFrame:
    """Return per model, layer and measure the excess over its null of the sample traced
    alone and inside its document, each with its permutation p-value, and their difference.

    Both tables come from :func:`moe_lib.analysis.information.expert_information` (or a
    split of it) on the two probes: columns model, layer, measure, excess, p, n_occurrences.
    """
    keys = ["model", "layer", "measure"]
    kept = ["excess", "p", "n_occurrences"]
    pair = (alone[alone.measure.isin(measures)][keys + kept]
            .merge(in_document[in_document.measure.isin(measures)][keys + kept], on=keys,
                   suffixes=("_alone", "_in_document"), validate="one_to_one"))
    missing = set(map(tuple, alone[alone.measure.isin(measures)][keys].astype(str).values)) - set(
        map(tuple, pair[keys].astype(str).values))
    if missing:
        raise ValueError(f"in-document table lacks rows the isolated one has: {sorted(missing)[:3]}")
    pair["difference"] = pair.excess_in_document - pair.excess_alone
    pair["measure"] = pd.Categorical(pair.measure, categories=[m for m in measures if m in set(pair.measure)],
                                     ordered=True)
    return pair.sort_values(["model", "measure", "layer"], kind="stable").reset_index(drop=True)
