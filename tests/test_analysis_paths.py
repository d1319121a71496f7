"""Tests of moe_lib.analysis.paths and moe_lib.analysis.route_clusters."""

import warnings

import numpy as np
import pytest
from helpers_traces import make_trace, random_trace

from moe_lib.analysis import paths, route_clusters


def test_a_route_that_never_varies_is_one_path_of_zero_entropy():
    ds = make_trace(np.tile([3, 1, 4], (50, 1)), 8)
    windows = paths.path_windows(ds)
    assert len(windows) == 3 + 2 + 1
    assert (windows["n_paths_seen"] == 1).all()
    assert (windows["entropy_bits"] == 0).all() and (windows["coverage_top10"] == 1).all()
    assert windows.set_index(["first_layer", "length"]).loc[(0, 3), "n_paths_possible"] == 8**3


def test_path_windows_by_hand():
    # Two layers of 2 experts; paths (0,0) x3, (0,1), (1,1) x4 over 8 tokens.
    ids = np.array([[0, 0]] * 3 + [[0, 1]] + [[1, 1]] * 4)
    row = paths.path_windows(make_trace(ids, 2)).set_index(["first_layer", "length"]).loc[(0, 2)]
    assert row["n_paths_seen"] == 3
    assert row["coverage_top10"] == pytest.approx(4 / 8)  # ceil(0.3) = 1 path
    assert row["coverage_top50"] == pytest.approx(7 / 8)  # ceil(1.5) = 2 paths
    p = np.array([3, 1, 4]) / 8
    assert row["normalised_entropy"] == pytest.approx(-(p * np.log2(p)).sum() / 2)


def test_uniform_random_routes_are_near_maximal_entropy():
    ds = make_trace(np.random.default_rng(0).integers(0, 4, (20000, 2)), 4)
    windows = paths.path_windows(ds)
    assert (windows["normalised_entropy"] > 0.99).all()
    assert (windows["n_paths_seen"] == windows["n_paths_reachable"]).all()


def test_path_codes_do_not_overflow_for_many_layers():
    routes = np.random.default_rng(0).integers(0, 256, (1000, 12))
    codes = paths.path_codes(routes, 0, 12)
    assert codes.max() < 1000 and np.unique(codes).size == np.unique(routes, axis=0).shape[0]


def test_path_groups_purity_token_entropy_and_contexts():
    # Path 0-0 holds token "a" meaning x (4 times); path 1-1 holds tokens a and b, meanings x, y.
    ids = np.array([[0, 0]] * 4 + [[1, 1]] * 4)
    ds = make_trace(
        ids, 2, token_id=[1, 1, 1, 1, 1, 2, 1, 2], token_str=["a", "a", "a", "a", "a", "b", "a", "b"],
        labels={"meaning": np.array(["x"] * 4 + ["x", "y", "y", "y"], dtype=object)},
    )
    groups = paths.path_groups(ds, min_tokens=4, n_examples=2, n_context=1).set_index("path")
    assert groups.loc["0-0", "n_token_ids"] == 1 and groups.loc["0-0", "token_id_entropy_bits"] == 0
    assert groups.loc["1-1", "token_id_entropy_bits"] == pytest.approx(1.0)
    assert groups.loc["0-0", "meaning_purity"] == 1.0 and groups.loc["1-1", "meaning_purity"] == 0.75
    assert groups.loc["1-1", "meaning_top"] == "y"
    assert all("[[" in text for text in groups.loc["0-0", "examples"])
    assert len(groups.loc["0-0", "examples"]) == 2


def test_path_group_purity_nulls_keep_group_size_and_token_identity():
    # Meaning x on token a, y on token b; path 0-0 holds only a's, path 1-1 a's and b's.
    ids = np.array([[0, 0]] * 6 + [[1, 1]] * 6)
    token_id = [1] * 6 + [1, 1, 1, 2, 2, 2]
    meaning = np.array(["x"] * 9 + ["y"] * 3, dtype=object)
    ds = make_trace(ids, 2, token_id=token_id, token_str=["a" if t == 1 else "b" for t in token_id],
                    labels={"meaning": meaning})
    groups = paths.path_groups(ds, min_tokens=6, n_shuffles=200).set_index("path")
    # within token id the meaning never moves: the token-keeping null equals the purity
    assert (groups["meaning_purity_token_null"] == groups["meaning_purity"]).all()
    # a random group of six from nine x and three y is less pure than 0-0's 1.0
    assert 0.75 < groups.loc["0-0", "meaning_purity_null"] < 1.0
    assert groups.loc["0-0", "meaning_purity"] == 1.0


def test_paths_to_cover_by_hand():
    ids = np.array([[0]] * 8 + [[1]] * 2 + [[2]] * 5 + [[3]] * 5)
    domain = np.array(["a"] * 10 + ["b"] * 10, dtype=object)
    table = paths.paths_to_cover(make_trace(ids, 4, labels={"domain": domain})).set_index("domain")
    assert table.loc["a", "n_paths_80"] == 1 and table.loc["a", "n_paths_95"] == 2
    assert table.loc["b", "n_paths_80"] == 2


def polysemous(n=300, informative_layer=1, seed=0):
    rng = np.random.default_rng(seed)
    meaning = rng.choice(["x", "y"], n)
    routes = rng.integers(0, 4, (n, 3))
    routes[:, informative_layer] = np.where(meaning == "x", 0, 1)
    return make_trace(routes, 4, token_id=np.full(n, 9),
                      labels={"is_target": np.ones(n, bool), "meaning": meaning.astype(object)})


def test_meaning_prediction_finds_the_informative_layer_and_shuffles_fall_to_majority():
    table = paths.meaning_prediction(polysemous()).set_index(["first_layer", "length"])
    assert table.loc[(1, 1), "accuracy"] == 1.0
    assert table.loc[(0, 1), "accuracy"] < 0.65
    assert table.loc[(0, 1), "predictor"] == "single layer" and table.loc[(0, 2), "predictor"] == "path"
    assert (table["accuracy_shuffled"] < table["majority_share"] + 0.08).all()


def test_nested_meaning_prediction_chooses_the_informative_window_on_inner_folds():
    table = paths.meaning_prediction_nested(polysemous()).set_index("predictor")
    # every outer fold picks layer 1 alone; a path through it is as good
    assert table.loc["single layer", "chosen"] == " ".join(["1+1"] * 5)
    assert table.loc["single layer", "accuracy"] == 1.0 and table.loc["path", "accuracy"] > 0.9
    assert table.loc["single layer", "n_windows"] == 3 and table.loc["path", "n_windows"] == 3


def test_nested_selection_removes_the_best_of_many_bias_on_noise():
    # routes independent of meaning: the best of the windows scored on the same folds beats
    # the majority by luck; chosen on inner folds and scored on outer ones it does not
    rng = np.random.default_rng(3)
    n = 240
    meaning = rng.choice(["x", "y"], n)
    ds = make_trace(rng.integers(0, 4, (n, 4)), 4, token_id=np.full(n, 9),
                    labels={"is_target": np.ones(n, bool), "meaning": meaning.astype(object)})
    flat = paths.meaning_prediction(ds, n_shuffles=1)
    nested = paths.meaning_prediction_nested(ds, n_shuffles=1).set_index("predictor")
    best_flat = flat[flat.length == 1].accuracy.max()
    assert nested.loc["single layer", "accuracy"] < best_flat
    assert abs(nested.loc["single layer", "accuracy"] - 0.5) < 0.1


def test_route_clusters_agree_with_a_label_that_decides_routes():
    ds = polysemous(400, informative_layer=0)
    ids = np.repeat(ds["expert_id"].values[:, :1], 3, axis=1)  # every layer = the meaning's expert
    ds = make_trace(ids, 4, labels={"meaning": ds["meaning"].values})
    clusters = route_clusters.cluster_routes(ds, min_cluster_size=5)
    table = route_clusters.cluster_label_agreement(ds, clusters, n_permutations=30).iloc[0]
    assert table["ami"] == pytest.approx(1.0) and table["p_value"] < 0.05


def test_route_clusters_ami_is_chance_for_block_labels_on_random_routes():
    # Regression: a sorted sample let HDBSCAN's tie-breaking by input order align clusters
    # with labels that run in blocks of the trace (AMI 0.08, p 0.01 on pure noise).
    ds = random_trace(2000, seed=0)
    clusters = route_clusters.cluster_routes(ds, min_cluster_size=5)
    row = route_clusters.cluster_label_agreement(ds, clusters, labels=["domain"], n_permutations=50).iloc[0]
    assert abs(row["ami"]) < 0.01 and row["p_value"] > 0.05


def test_path_context_correlation_detects_shared_structure_and_not_noise():
    rng = np.random.default_rng(0)
    group = rng.integers(0, 3, 300)
    routes = np.stack([group, group, rng.integers(0, 4, 300)], axis=1)
    ds = make_trace(routes, 4)
    # Contexts near one of three directions, the same grouping as the routes.
    embeddings = np.eye(3)[group] + 0.3 * rng.standard_normal((300, 3))
    linked = route_clusters.path_context_correlation(ds, embeddings, n_permutations=50).iloc[0]
    assert linked["spearman"] > 0.5 and linked["p_value"] < 0.05
    unrelated = route_clusters.path_context_correlation(ds, rng.standard_normal((300, 3)), n_permutations=50)
    assert abs(unrelated["spearman"].iloc[0]) < 0.05 and unrelated["p_value"].iloc[0] > 0.05


def test_path_context_correlation_is_nan_where_routes_never_vary():
    """Every pair at the same path distance: no correlation, and no p-value pretending one."""
    rng = np.random.default_rng(0)
    ds = make_trace(np.tile([[1, 3, 2]], (40, 1)), 4)
    embeddings = rng.standard_normal((40, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by a zero spread on the way
        row = route_clusters.path_context_correlation(ds, embeddings, n_permutations=20).iloc[0]
    assert row["n_tokens"] == 40
    for column in ("spearman", "spearman_shuffled", "spearman_shuffled_q95", "p_value"):
        assert np.isnan(row[column]), column
    # the same tokens with routes that vary get a number again: NaN is not the default
    varied = make_trace(np.stack([rng.integers(0, 4, 40)] * 3, axis=1), 4)
    row = route_clusters.path_context_correlation(varied, embeddings, n_permutations=20).iloc[0]
    assert not np.isnan(row["spearman"]) and not np.isnan(row["p_value"])


def test_path_groups_of_a_token_subset_keep_their_contexts():
    # Target "bank" at position 1 of three texts; its contexts come from the whole trace.
    words = ["the", " bank", " of"] * 3
    ds = make_trace(np.zeros((9, 2), int), 2, seq=np.repeat([0, 1, 2], 3), pos=np.tile([0, 1, 2], 3),
                    token_id=[1, 2, 3] * 3, token_str=words)
    target = np.array([False, True, False] * 3)
    groups = paths.path_groups(ds, min_tokens=3, n_context=1, tokens=target)
    assert groups["n_tokens"].tolist() == [3] and groups["top_token"].iloc[0] == " bank"
    assert groups["examples"].iloc[0][0] == "the[[ bank]] of"


@pytest.mark.filterwarnings("ignore::UserWarning:umap")  # few distinct points: UMAP says so
def test_route_map_places_each_route_nearest_its_own_group_and_is_seeded():
    ds = polysemous(400, informative_layer=0)
    ids = np.repeat(ds["expert_id"].values[:, :1], 3, axis=1)  # four routes, one per expert
    ds = make_trace(ids, 4, labels={"meaning": ds["meaning"].values})
    table = route_clusters.route_map(ds, max_tokens=300, seed=0)
    assert len(table) == 300 and table["token"].is_unique and table["token"].is_monotonic_increasing
    assert (table["path"] == ["-".join(map(str, r)) for r in ids[table["token"], :, 0]]).all()
    centres = table.groupby("path")[["x", "y"]].mean()
    squared = ((table[["x", "y"]].to_numpy()[:, None] - centres.to_numpy()[None]) ** 2).sum(-1)
    assert (centres.index[squared.argmin(axis=1)] == table["path"]).all()
    again = route_clusters.route_map(ds, max_tokens=300, seed=0)
    np.testing.assert_array_equal(table[["x", "y"]].to_numpy(), again[["x", "y"]].to_numpy())
