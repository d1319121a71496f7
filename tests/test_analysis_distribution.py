"""Tests of moe_lib.analysis.distribution on traces whose answers are known by hand."""

import numpy as np
import pytest
from helpers_traces import make_trace, random_trace

from moe_lib.analysis import distribution


def test_weight_by_slot_quantiles_per_layer_and_slot():
    weight = np.array([[[0.7, 0.3]], [[0.9, 0.1]], [[0.8, 0.2]]])  # (token, layer, slot)
    ds = make_trace(np.array([[[0, 1]], [[1, 2]], [[2, 3]]]), 4, weight)
    table = distribution.weight_by_slot(ds).set_index("slot")
    assert table.loc[0, "median"] == pytest.approx(0.8)
    assert table.loc[1, "mean"] == pytest.approx(0.2)
    assert (table["q05"] <= table["q25"]).all() and (table["q75"] <= table["q95"]).all()


def test_expert_load_and_balance_by_hand():
    # Layer 0: experts 0,0,0,1 (of 4) -> shares 3/4, 1/4; layer 1 uses all four once.
    ids = np.array([[0, 0], [0, 1], [0, 2], [1, 3]])
    ds = make_trace(ids, 4)
    load = distribution.expert_load(ds)
    layer0 = load[load.layer == 0].set_index("expert")["share"]
    assert layer0.tolist() == [0.75, 0.25, 0.0, 0.0]
    balance = distribution.load_balance(ds).set_index("layer")
    assert balance.loc[0, "max_over_mean"] == pytest.approx(3.0)
    assert balance.loc[1, "max_over_mean"] == pytest.approx(1.0)
    assert balance.loc[1, "normalised_entropy"] == pytest.approx(1.0)
    expected = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    assert balance.loc[0, "entropy_bits"] == pytest.approx(expected)
    assert balance.loc[0, "n_dead"] == 2


def test_router_entropy_from_logits_and_from_weights():
    # Equal logits give the uniform distribution: log2 n_experts bits.
    ids = np.array([[[0, 1]], [[2, 3]]])
    logits = np.zeros((2, 1, 8))
    with_logits = make_trace(ids, 8, router_logits=logits)
    table = distribution.router_entropy(with_logits)
    assert table["source"].iloc[0] == "router_logits"
    assert table["median"].iloc[0] == pytest.approx(3.0)
    # Without logits: entropy of the renormalised top-k weights, here (1/2, 1/2) = 1 bit.
    no_logits = make_trace(ids, 8, np.full((2, 1, 2), 0.25))
    table = distribution.router_entropy(no_logits)
    assert table["source"].iloc[0] == "top_k_weights"
    assert table["mean"].iloc[0] == pytest.approx(1.0)
    assert table["max_entropy_bits"].iloc[0] == pytest.approx(1.0)


def test_consecutive_routing_counts_only_pairs_of_one_text():
    # Two texts: [0, 0, 1] and [1, 1]; the pair across texts (1 -> 1) must not count.
    ids = np.array([[0], [0], [1], [1], [1]])
    ds = make_trace(ids, 2, seq=[0, 0, 0, 1, 1], pos=[0, 1, 2, 0, 1])
    row = distribution.consecutive_routing(ds).iloc[0]
    assert row["n_pairs"] == 3
    assert row["p_same_top1"] == pytest.approx(2 / 3)
    # Loads 2/5 and 3/5: chance = 0.4**2 + 0.6**2.
    assert row["p_same_top1_chance"] == pytest.approx(0.52)


def test_consecutive_topk_overlap_and_chance_on_random_routing():
    ds = random_trace(20000, n_layers=2, n_experts=8, top_k=2, seed=3)
    table = distribution.consecutive_routing(ds)
    # Independent tokens: observed overlap matches the load-based chance.
    assert np.allclose(table["topk_overlap"], table["topk_overlap_chance"], atol=0.01)
    assert np.allclose(table["p_same_top1"], table["p_same_top1_chance"], atol=0.01)


def test_consecutive_topk_overlap_by_hand():
    ids = np.array([[[0, 1]], [[1, 2]], [[1, 2]]])  # overlaps 1 then 2 of k=2
    row = distribution.consecutive_routing(make_trace(ids, 4)).iloc[0]
    assert row["topk_overlap"] == pytest.approx((0.5 + 1.0) / 2)
    assert row["p_any_shared"] == 1.0


def test_weight_by_slot_keeps_layers_and_slots_apart():
    # Layer 0 slot 0 weights 0.9, slot 1 0.1; layer 1 slot 0 0.6, slot 1 0.4.
    weight = np.tile([[0.9, 0.1], [0.6, 0.4]], (5, 1, 1))
    ds = make_trace(np.tile([[0, 1], [2, 3]], (5, 1, 1)), 4, weight, layers=[3, 7])
    table = distribution.weight_by_slot(ds).set_index(["layer", "slot"])
    assert table["median"].to_dict() == pytest.approx({(3, 0): 0.9, (3, 1): 0.1, (7, 0): 0.6, (7, 1): 0.4})


def test_expert_ids_decoded_as_float_by_a_store_are_read_or_refused():
    ds = make_trace(np.array([[0], [1], [1]]), 2)
    decoded = ds.assign(expert_id=ds["expert_id"].astype(np.float32))  # as xarray's CF decoding gives
    assert distribution.expert_load(decoded)["n_assignments"].tolist() == [1, 2]
    missing = decoded.assign(expert_id=decoded["expert_id"].where(decoded["expert_id"] != 0))
    with pytest.raises(ValueError, match="missing values"):
        distribution.expert_load(missing)
