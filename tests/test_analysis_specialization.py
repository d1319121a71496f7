"""Tests of moe_lib.analysis.specialization."""

import numpy as np
import pytest
from helpers_traces import make_trace

from moe_lib.analysis import specialization
from moe_lib.core.schema import TraceSchemaError, check_trace


def split_domains():
    """Domain a always on expert 0, domain b on expert 1 (of 4), top-1, 3 and 1 tokens."""
    ids = np.array([[0], [0], [0], [1]])
    return make_trace(ids, 4, labels={"domain": np.array(["a", "a", "a", "b"], dtype=object)})


def test_domain_share_against_uniform():
    table = specialization.domain_expert_share(split_domains()).set_index(["domain", "expert"])
    assert table.loc[("a", 0), "share"] == 1.0 and table.loc[("a", 1), "share"] == 0.0
    assert table.loc[("a", 0), "uniform_share"] == 0.25 and table.loc[("a", 0), "ratio"] == 4.0


def test_tv_distance_of_perfectly_split_domains_by_hand():
    # Pooled (3/4, 1/4): TV(a) = 1/2 (|1 - 3/4| + |0 - 1/4|) = 1/4, TV(b) = 3/4.
    table = specialization.domain_tv_distance(split_domains(), n_permutations=5).set_index("domain")
    assert table.loc["a", "tv_distance"] == pytest.approx(0.25)
    assert table.loc["b", "tv_distance"] == pytest.approx(0.75)


def test_tv_shuffled_baseline_matches_random_domains():
    rng = np.random.default_rng(0)
    ds = make_trace(rng.integers(0, 8, (6000, 2)), 8,
                    labels={"domain": rng.choice(["a", "b", "c"], 6000).astype(object)})
    table = specialization.domain_tv_distance(ds, n_permutations=20)
    assert np.allclose(table["tv_distance"], table["tv_shuffled"], atol=0.02)


def test_vocabulary_specialization_by_hand_and_next_token_ids():
    ids = np.array([[0], [0], [0], [1], [2], [2]])
    ds = make_trace(ids, 4, token_id=[5, 5, 5, 5, 6, 6], seq=[0, 0, 0, 1, 1, 1], pos=[0, 1, 2, 0, 1, 2])
    table = specialization.vocabulary_specialization(ds, min_count=2).set_index("token_id")
    assert table.loc[5, "specialization"] == 0.75 and table.loc[5, "top_expert"] == 0
    assert table.loc[6, "specialization"] == 1.0
    assert specialization.next_token_ids(ds).tolist() == [5, 5, -1, 6, 6, -1]
    by_next = specialization.vocabulary_specialization(ds, specialization.next_token_ids(ds), min_count=1)
    assert by_next.set_index("token_id").loc[5, "n_occurrences"] == 2


def test_characteristic_tokens_rank_by_lift():
    # Token 7 always goes to expert 1, token 8 half to expert 1: 7 is more characteristic.
    ids = np.array([[1]] * 4 + [[1], [0]] * 4)
    ds = make_trace(ids, 2, token_id=[7] * 4 + [8] * 8)
    table = specialization.characteristic_tokens(ds, n_top=2, min_count=1)
    best = table[(table.expert == 1) & (table["rank"] == 0)].iloc[0]
    assert best["token_id"] == 7 and best["lift"] == pytest.approx(1.0 / (8 / 12))


def test_coactivation_counts_every_pair_of_a_top4():
    ds = make_trace(np.array([[[0, 1, 2, 3]], [[0, 1, 4, 5]]]), 8)
    table = specialization.coactivation(ds).set_index(["expert_i", "expert_j"])
    assert table["n_ij"].sum() == 2 * 4 * 3  # 12 ordered pairs per token, not 3 adjacent ones
    assert table.loc[(0, 1), "n_ij"] == 2 and table.loc[(0, 1), "p_j_given_i"] == 1.0
    assert table.loc[(3, 0), "n_ij"] == 1 and table.loc[(0, 4), "p_j_given_i"] == 0.5
    assert table.loc[(2, 4), "n_ij"] == 0


def test_independent_experts_have_lift_one():
    rng = np.random.default_rng(0)
    keys = rng.random((40000, 1, 16))
    ids = np.argsort(keys, axis=-1)[..., :4]  # 4 distinct experts, drawn independently of each other
    table = specialization.coactivation(make_trace(ids, 16))
    assert table["lift"].mean() == pytest.approx(1.0, abs=0.01)
    assert table["lift"].between(0.8, 1.2).all()


def with_predictions(ds, predicted, vocab_size=10):
    """Return ``ds`` with a ``predicted_id`` variable, as collect_trace(predictions=True) stores it."""
    out = ds.assign(predicted_id=("token", np.asarray(predicted, np.int32)))
    out.attrs["vocab_size"] = vocab_size
    return check_trace(out)


def test_vocabulary_specialization_of_predicted_tokens_by_hand():
    # top-1 routes 0 0 1 | 1 2 2; predicted 7 7 7 | 8 8 8; inputs alternate 5 6 5 6 5 6
    ds = with_predictions(
        make_trace(np.array([[0], [0], [1], [1], [2], [2]]), 4, token_id=[5, 6, 5, 6, 5, 6]),
        [7, 7, 7, 8, 8, 8],
    )
    table = specialization.vocabulary_by_kind(ds, min_count=3)
    predicted = table[table.token_kind == "predicted next token"].set_index("token_id")
    assert sorted(predicted.index) == [7, 8]
    assert predicted.loc[7, "top_expert"] == 0 and predicted.loc[7, "specialization"] == pytest.approx(2 / 3)
    assert predicted.loc[8, "top_expert"] == 2 and predicted.loc[8, "specialization"] == pytest.approx(2 / 3)
    assert (predicted["n_occurrences"] == 3).all()
    inputs = table[table.token_kind == "input token"].set_index("token_id")
    assert inputs.loc[5, "specialization"] == pytest.approx(1 / 3)  # experts 0, 1, 2
    assert set(table.token_kind) == {"input token", "next token", "predicted next token"}


def test_vocabulary_by_kind_leaves_out_predictions_a_trace_lacks():
    ds = make_trace(np.array([[0], [0], [1]]), 2, token_id=[5, 5, 5])
    assert set(specialization.vocabulary_by_kind(ds, min_count=1).token_kind) == {"input token", "next token"}
    with pytest.raises(ValueError, match="no variable 'predicted_id'.*predictions=True"):
        specialization.predicted_token_ids(ds)


@pytest.mark.parametrize(
    ("predicted", "vocab_size", "message"),
    [
        (np.array([1, 2, 10], np.int32), 10, "predicted_id holds 10, outside the vocabulary"),
        (np.array([1, -1, 3], np.int32), 10, "predicted_id holds -1"),
        (np.array([1, 2, 3], np.int64), 10, "predicted_id has dtype int64"),
        (np.array([1, 2, 3], np.int32), None, "no attribute 'vocab_size'"),
    ],
)
def test_schema_checks_predicted_ids(predicted, vocab_size, message):
    ds = make_trace(np.array([[0], [0], [1]]), 2).assign(predicted_id=("token", predicted))
    if vocab_size is not None:
        ds.attrs["vocab_size"] = vocab_size
    with pytest.raises(TraceSchemaError, match=message):
        check_trace(ds)


def test_schema_checks_predicted_id_dims():
    ds = make_trace(np.array([[0, 1], [0, 1]]), 2)
    ds = ds.assign(predicted_id=(("token", "layer"), np.zeros((2, 2), np.int32)))
    ds.attrs["vocab_size"] = 4
    with pytest.raises(TraceSchemaError, match="predicted_id has dims"):
        check_trace(ds)
