"""Tests of moe_lib.analysis.crosslayer."""

import numpy as np
import pytest
from helpers_traces import make_trace, random_trace

from moe_lib.analysis import crosslayer
from moe_lib.analysis.common import js_distance


def polysemous_trace(n=400, separate=True, seed=0):
    """Token 5 with meanings a/b: routed to 0/1 by meaning if ``separate``, at random if not."""
    rng = np.random.default_rng(seed)
    meaning = rng.choice(["a", "b"], n)
    expert = (meaning == "b").astype(int) if separate else rng.integers(0, 2, n)
    ids = np.stack([expert, expert + 2], axis=1)  # layer 1 continues layer 0's choice
    filler = rng.integers(0, 4, (n, 2))
    return make_trace(
        np.concatenate([ids, filler]), 4,
        token_id=np.r_[np.full(n, 5), np.full(n, 6)],
        labels={"is_target": np.r_[np.ones(n, bool), np.zeros(n, bool)],
                "meaning": np.r_[meaning, np.full(n, "")].astype(object)},
    )


def test_js_distance_zero_for_identical_and_one_for_disjoint():
    assert js_distance(np.array([1, 2, 3]), np.array([2, 4, 6])) == pytest.approx(0.0)
    assert js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)


def test_meaning_flow_counts_transitions_per_meaning():
    ds = polysemous_trace(100)
    flow = crosslayer.meaning_flow(ds)
    assert set(flow["meaning"]) == {"a", "b"}
    a = flow[flow.meaning == "a"]
    assert a[["expert", "next_expert"]].values.tolist() == [[0, 2]]
    assert flow["n_tokens"].sum() == 100 and (flow["share"] == 1.0).all()


def test_target_occurrences_leave_the_callers_labels_unchanged():
    ds = make_trace(np.zeros((4, 2), int), 2, token_id=[5, 6, 5, 6],
                    labels={"is_target": np.array([True, True, False, True])})
    before = ds["is_target"].values.copy()
    occ = crosslayer.target_occurrences(ds, token_id=6)
    assert occ["token_id"].values.tolist() == [6, 6] and occ["pos"].values.tolist() == [1, 3]
    np.testing.assert_array_equal(ds["is_target"].values, before)
    assert crosslayer.target_occurrences(ds)["pos"].values.tolist() == [0, 1, 3]


def test_context_specialization_against_shuffled_meanings():
    separate = crosslayer.specialization_js(polysemous_trace(), n_permutations=50)
    # Meanings on disjoint experts: JS(meaning, pooled) = sqrt(1 - H(1/2,1/2)/2 ...) > baseline.
    assert (separate["context_js"] > 0.5).all()
    assert (separate["context_p_value"] < 0.05).all()
    mixed = crosslayer.specialization_js(polysemous_trace(separate=False), n_permutations=50)
    assert (mixed["context_js"] < mixed["context_js_shuffled_q95"] + 0.02).all()
    assert (mixed["context_p_value"] > 0.05).all()


def confounded_trace(route_by, n=600, seed=0):
    """Token 5 with meanings a/b from sources s/t, meaning and source agreeing 80 % of the
    time (the probe's confound); its top-1 expert follows ``route_by`` ("source" or "meaning")."""
    rng = np.random.default_rng(seed)
    source = rng.integers(0, 2, n)
    meaning = np.where(rng.random(n) < 0.8, source, 1 - source)
    expert = source if route_by == "source" else meaning
    ids = np.stack([expert, expert + 2], axis=1)
    return make_trace(ids, 4, token_id=np.full(n, 5),
                      labels={"is_target": np.ones(n, bool), "meaning": np.array(["a", "b"])[meaning].astype(object),
                              "source": np.array([f"{'st'[s]}:doc{i}:line 1 [validation]"
                                                  for i, s in enumerate(source)], dtype=object)})


def test_corpus_source_is_the_genre_before_the_samples_place():
    places = ["sotu:1863-lincoln:line 4 [validation]", "gcide:B:line 9 [unused]", "plain"]
    assert crosslayer.corpus_source(places).tolist() == ["sotu", "gcide", "plain"]


def test_the_source_matched_null_absorbs_routing_by_source_and_keeps_routing_by_meaning():
    by_source = crosslayer.specialization_js(confounded_trace("source"), n_permutations=50)
    # meaning looks specialised against the plain shuffle: it rides on source
    assert (by_source["context_js"] > by_source["context_js_shuffled_q95"] + 0.1).all()
    # within source, shuffling meanings changes nothing the routes follow
    assert (by_source["context_js"] < by_source["context_js_source_shuffled_q95"] + 0.02).all()
    by_meaning = crosslayer.specialization_js(confounded_trace("meaning"), n_permutations=50)
    assert (by_meaning["context_js"] > by_meaning["context_js_source_shuffled_q95"] + 0.1).all()
    # no source label: no source-matched null
    assert polysemous_trace().pipe(crosslayer.specialization_js, n_permutations=5)[
        "context_js_source_shuffled"].isna().all()


def test_permutation_baseline_is_seeded():
    ds = polysemous_trace(separate=False)
    a = crosslayer.specialization_js(ds, n_permutations=10, seed=4)
    b = crosslayer.specialization_js(ds, n_permutations=10, seed=4)
    assert a.equals(b)


def test_expert_continuity_deterministic_versus_random():
    ds = polysemous_trace()
    targets = crosslayer.target_occurrences(ds)
    row = crosslayer.expert_continuity(targets, n_permutations=20).iloc[0]
    assert row["nmi"] == pytest.approx(1.0)  # layer 1 = layer 0 + 2
    assert row["nmi_shuffled"] < 0.05
    noise = crosslayer.expert_continuity(random_trace(5000, n_layers=3, seed=2), n_permutations=5)
    # Independent layers: NMI is only the finite-sample bias that the shuffles also show.
    assert np.allclose(noise["nmi"], noise["nmi_shuffled"], atol=0.004)


def test_target_occurrences_errors_name_what_is_missing():
    with pytest.raises(KeyError, match="is_target"):
        crosslayer.target_occurrences(random_trace(50))
    with pytest.raises(ValueError, match="token_id 99"):
        crosslayer.target_occurrences(polysemous_trace(10), token_id=99)


def test_several_target_tokens_need_a_token_id():
    ds = polysemous_trace(20)
    both = ds.assign_coords(is_target=("token", np.ones(ds.sizes["token"], bool)))
    with pytest.raises(ValueError, match="pass token_id"):
        crosslayer.meaning_flow(both)
    assert set(crosslayer.meaning_flow(both, token_id=5)["meaning"]) == {"a", "b"}
