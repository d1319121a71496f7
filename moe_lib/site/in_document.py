"""The contextual measures read on the same occurrences alone and inside their documents
(issue 12, item 2): the tables the cross-layer chapter sets side by side."""

from __future__ import annotations

import pandas as pd

MEANING_MEASURES = ("I(E; M | T)", "I(E; S | T)", "I(E; M | T, S)")


def alone_and_in_document(alone: pd.DataFrame, in_document: pd.DataFrame,
                          measures=MEANING_MEASURES, other_document: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return per model, layer and measure the excess over its null of the sample traced
    alone and inside its document, each with its permutation p-value, and their difference.

    With ``other_document`` (the position control: the sample after as many tokens of
    other sources' text), also its excess and p-value, ``other_minus_alone`` (what sitting
    as late, after text of another kind, does) and ``own_minus_other`` (what the
    document's own text adds at the same position).

    The tables come from :func:`moe_lib.analysis.information.expert_information` (or a
    split of it) on the probes: columns model, layer, measure, excess, p, n_occurrences.
    """
    keys = ["model", "layer", "measure"]
    kept = ["excess", "p", "n_occurrences"]
    named = {"alone": alone, "in_document": in_document}
    if other_document is not None:
        named["other_document"] = other_document
    parts = {name: table[table.measure.isin(measures)][keys + kept].rename(columns={c: f"{c}_{name}" for c in kept})
             for name, table in named.items()}
    pair = parts["alone"]
    for name in list(named)[1:]:
        pair = pair.merge(parts[name], on=keys, validate="one_to_one")
        missing = set(map(tuple, parts["alone"][keys].astype(str).values)) - set(map(tuple, pair[keys].astype(str).values))
        if missing:
            raise ValueError(f"{name.replace('_', '-')} table lacks rows the isolated one has: {sorted(missing)[:3]}")
    pair["difference"] = pair.excess_in_document - pair.excess_alone
    if other_document is not None:
        pair["other_minus_alone"] = pair.excess_other_document - pair.excess_alone
        pair["own_minus_other"] = pair.excess_in_document - pair.excess_other_document
    pair["measure"] = pd.Categorical(pair.measure, categories=[m for m in measures if m in set(pair.measure)],
                                     ordered=True)
    return pair.sort_values(["model", "measure", "layer"], kind="stable").reset_index(drop=True)
