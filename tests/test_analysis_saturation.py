"""Tests of moe_lib.analysis.saturation."""

import numpy as np
import pytest
from helpers_traces import make_trace, random_trace

from moe_lib.analysis import saturation


def test_final_checkpoint_is_saturated_with_itself():
    ds = random_trace(500, seed=1)
    early = ds.copy(data={**ds.data_vars, "expert_id": random_trace(500, seed=2)["expert_id"].values})
    table = saturation.router_saturation({"early": early, "final": ds})
    final = table[table.checkpoint == "final"]
    assert (final["topk_overlap"] == 1.0).all() and (final["top1_agreement"] == 1.0).all()
    early = table[table.checkpoint == "early"]
    assert (early["topk_overlap"] < 0.6).all()


def test_overlap_by_hand():
    final = make_trace(np.array([[[0, 1]], [[2, 3]]]), 4)
    early = make_trace(np.array([[[1, 2]], [[0, 1]]]), 4)  # overlaps 1/2 and 0
    table = saturation.router_saturation({100: early, 200: final}).set_index("checkpoint")
    assert table.loc[100, "topk_overlap"] == pytest.approx(0.25)
    assert table.loc[100, "top1_agreement"] == 0.0


def test_misaligned_checkpoints_are_refused():
    with pytest.raises(ValueError, match="same tokens"):
        saturation.router_saturation({0: random_trace(100), 1: random_trace(120)})


def test_token_expert_distribution_sums_to_one_and_keeps_every_expert():
    ds = make_trace(np.array([[0], [1], [1], [3]]), 4, token_id=[7, 7, 7, 8])
    table = saturation.token_expert_distribution({"a": ds, "b": ds}, [7])
    assert len(table) == 2 * 4
    a = table[table.checkpoint == "a"].set_index("expert")["share"]
    assert a.tolist() == pytest.approx([1 / 3, 2 / 3, 0, 0])
    with pytest.raises(ValueError, match="token_id 9"):
        saturation.token_expert_distribution({"a": ds}, [9])
