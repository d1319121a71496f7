"""The conditions of the pruning studies (issue 13): ranked, random, per-domain and top-k removals."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from moe_lib.interventions import pruning_curves
from moe_lib.interventions.ablation import Condition


def _scores() -> xr.Dataset:
    dims = ("layer", "expert")
    coords = {"layer": [1, 2], "expert": range(4), "renormalize": [False, True]}
    frequency = np.array([[0.4, 0.1, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4]])
    causal = np.stack([frequency[:, ::-1], frequency], axis=-1)
    return xr.Dataset({"frequency": (dims, frequency), "mean_weight": (dims, frequency), "reap": (dims, frequency),
                       "loss_increase": (("layer", "expert", "renormalize"), causal)}, coords=coords)


def test_curves_remove_the_least_important_first_and_draw_random_ones_apart():
    labelled = pruning_curves.curve_conditions(_scores(), [1, 2], n_draws=3, seed=0)
    by_label = {(labels["curve"], labels["n_removed"], labels["draw"]): condition for condition, labels in labelled}
    assert by_label[("frequency", 1, -1)].experts_by_layer() == {1: [1], 2: [0]}
    assert by_label[("causal", 2, -1)].experts_by_layer() == {1: [0, 2], 2: [2, 3]}  # unrenormalised, reversed
    assert all(c.reroute for c, _ in labelled)
    draws = [by_label[("random", 2, d)].experts_by_layer() for d in range(3)]
    assert all(len(ids) == 2 for draw in draws for ids in draw.values()) and len({str(d) for d in draws}) > 1
    again = pruning_curves.curve_conditions(_scores(), [1, 2], n_draws=3, seed=0)
    assert [c for c, _ in again] == [c for c, _ in labelled]


def test_each_domain_keeps_the_experts_it_uses_most():
    routed = np.zeros((3, 1, 4))
    routed[0, 0] = [5, 0, 1, 9]  # doc 0, domain "code"
    routed[1, 0] = [0, 7, 6, 0]  # doc 1, domain "speech"
    routed[2, 0] = [1, 0, 0, 0]  # doc 2, domain "code"
    measured = xr.Dataset({"doc_n_routed": (("doc", "layer", "expert"), routed)},
                          coords={"doc": range(3), "layer": [0], "expert": range(4)})
    usage = pruning_curves.domain_usage(measured, ["code", "speech", "code"])
    kept = {labels["kept_for"]: condition.experts_by_layer() for condition, labels in
            pruning_curves.keep_conditions(usage, n_keep=2)}
    assert kept == {"code": {0: [1, 2]}, "speech": {0: [0, 3]}}  # removed: all but the two most used


def test_fewer_experts_per_token_drops_the_lowest_ranks_renormalised():
    conditions = [c for c, _ in pruning_curves.topk_conditions(4)]
    assert conditions == [Condition(slots=f"{k}+", renormalize=True) for k in (1, 2, 3)]


def test_summaries_give_every_label_its_row_even_for_a_shared_condition():
    same = Condition.removing({0: [1]}, reroute=True)
    labelled = [(same, {"study": "curve", "curve": "frequency", "n_removed": 1}),
                (same, {"study": "curve", "curve": "random", "n_removed": 1, "draw": 0})]
    rows = []
    for condition, nll in ((Condition(), [10.0, 20.0]), (same, [12.0, 26.0])):
        for item in range(2):
            rows.append({**condition.columns(), "item": item, "nll_sum": nll[item], "n_predicted": 10,
                         "domain": ["code", "speech"][item]})
    summary = pruning_curves.summarize_studies(pd.DataFrame(rows), labelled, n_boot=50)
    pooled = summary[summary["domain"] == "all"].set_index("curve")
    assert pooled.loc["frequency", "delta"] == pooled.loc["random", "delta"] == pytest.approx(0.4)
    assert pooled.loc["", "loss"] == pytest.approx(1.5) and pooled.loc["", "study"] == "baseline"
    assert summary[summary["domain"] == "speech"].set_index("curve").loc["random", "delta"] == pytest.approx(0.6)
