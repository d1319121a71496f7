"""Tests of the site tables of the paths and specialization chapters (moe_lib.site.tables),
on hand-built traces whose answers are known."""

import numpy as np
import pandas as pd
import pytest
from helpers_traces import make_trace

from moe_lib.analysis import paths, specialization
from moe_lib.site import tables as site_tables


def contextual_trace(n_per_meaning: int = 40, seed: int = 0):
    """Return a contextual-probe-like trace: target " x" whose route follows its meaning
    exactly (meaning a: experts 0-0, b: 1-1), target " y" routed at random, each occurrence
    followed by one context token " c" in its own sample."""
    rng = np.random.default_rng(seed)
    n_samples = 4 * n_per_meaning
    target = np.repeat([" x", " y"], 2 * n_per_meaning)
    meaning = np.array(["a", "b"] * (n_samples // 2), dtype=object)
    routes = np.where(meaning == "a", 0, 1)[:, None].repeat(2, axis=1)
    routes[target == " y"] = rng.integers(0, 4, size=((target == " y").sum(), 2))
    ids = np.zeros((2 * n_samples, 2), int)
    ids[0::2] = routes
    ids[1::2] = 3  # the context token
    token_str = np.empty(2 * n_samples, dtype=object)
    token_str[0::2], token_str[1::2] = target, " c"
    return make_trace(
        ids, 4, seq=np.repeat(np.arange(n_samples), 2), pos=np.tile([0, 1], n_samples),
        token_id=np.where(token_str == " x", 1, np.where(token_str == " y", 2, 3)), token_str=token_str,
        labels={"is_target": np.tile([True, False], n_samples), "target": np.repeat(target, 2),
                "meaning": np.repeat(meaning, 2)},
    )


def domain_trace(n_per_domain: int = 100):
    """Return a trace where domain A always takes route 0-0 and domain B route 1-1."""
    domain = np.repeat(["A", "B"], n_per_domain).astype(object)
    routes = np.where(domain == "A", 0, 1)[:, None].repeat(2, axis=1)
    return make_trace(routes, 4, seq=np.repeat(np.arange(2 * n_per_domain // 10), 10),
                      pos=np.tile(np.arange(10), 2 * n_per_domain // 10),
                      labels={"domain": domain, "language": np.repeat(["en", "fr"], n_per_domain).astype(object)})


def test_sample_texts_join_each_samples_pieces_in_position_order():
    ds = make_trace(np.zeros((5, 1), int), 2, seq=[0, 0, 1, 1, 1], pos=[1, 0, 0, 1, 2],
                    token_str=np.array(["b", "a", "x", " y", "z"], dtype=object))
    assert list(site_tables.sample_texts(ds)) == ["ab", "ab", "x yz", "x yz", "x yz"]


def test_independent_layers_keep_each_layers_load_and_break_their_link():
    ds = domain_trace()
    shuffled = site_tables.independent_layers(ds, seed=1)
    original = ds["expert_id"].values[:, :, 0]
    for layer in range(2):
        np.testing.assert_array_equal(np.sort(shuffled["expert_id"].values[:, layer, 0]), np.sort(original[:, layer]))
    windows = site_tables.path_windows_with_baseline(ds).set_index(["kind", "first_layer", "length"])
    assert windows.loc[("observed", 0, 2), "n_paths_seen"] == 2  # the layers agree: 2 of 16 paths
    assert windows.loc[("shuffled layers", 0, 2), "n_paths_seen"] == 4  # independent: all 2 x 2
    for first in (0, 1):  # one layer alone is the same either way
        assert windows.loc[("observed", first, 1), "entropy_bits"] == windows.loc[("shuffled layers", first, 1),
                                                                                 "entropy_bits"]
    assert windows.loc[("observed", 0, 2), "seen_over_reachable"] == pytest.approx(2 / 16)


def test_experts_that_split_domains_need_one_path_each_against_two_by_chance():
    cover = site_tables.paths_to_cover_with_baseline(domain_trace(), n_shuffles=5).set_index("domain")
    assert (cover["n_paths_80"] == 1).all() and (cover["n_paths_95"] == 1).all()
    # Shuffled, each domain holds about half of each path: two paths to reach 80 %.
    assert (cover["n_paths_80_shuffled"] == 2).all()


def test_route_clusters_of_perfectly_split_domains_agree_with_the_domain():
    table = site_tables.route_cluster_agreement(domain_trace(), n_permutations=20).set_index("label")
    assert table.loc["domain", "ami"] == pytest.approx(1.0)
    assert table.loc["domain", "p_value"] == pytest.approx(1 / 21)
    assert abs(table.loc["domain", "ami_shuffled"]) < 0.05


def test_route_clusters_of_targets_compare_with_target_and_meaning():
    table = site_tables.route_cluster_agreement(contextual_trace(), targets_only=True, n_permutations=10)
    assert list(table["label"]) == ["target", "meaning"]
    assert (table["n_tokens"] == 160).all()  # target occurrences only, not the context tokens


def test_target_path_groups_are_formed_within_each_token_with_a_shuffled_baseline():
    table = site_tables.path_groups_table(contextual_trace(), targets_only=True, min_tokens=10, n_shuffles=5)
    x = table[table["target"] == " x"]
    assert sorted(x["path"]) == ["0-0", "1-1"] and (x["n_tokens"] == 40).all()
    assert (x["meaning_purity"] == 1).all() and (x["meaning_majority_share"] == 0.5).all()
    assert (x["meaning_purity_shuffled"] < 0.8).all()  # 40 of 80 shuffled: purity near 0.5-0.6
    assert (table["n_token_ids"] == 1).all()
    assert all("[[ x]]" in e or "[[ y]]" in e for e in table["examples"])
    summary = site_tables.group_purity_summary(x.assign(model="m"))
    assert summary.loc[0, "meaning_purity"] == 1 and summary.loc[0, "n_groups"] == 2


def test_group_purity_summary_weights_groups_by_size():
    groups = pd.DataFrame({"model": ["m", "m"], "n_tokens": [10, 30], "meaning_purity": [1.0, 0.5],
                           "meaning_purity_shuffled": [0.6, 0.4], "meaning_majority_share": [0.5, 0.5]})
    row = site_tables.group_purity_summary(groups).iloc[0]
    assert row["meaning_purity"] == pytest.approx(0.625) and row["meaning_purity_shuffled"] == pytest.approx(0.45)
    assert row["n_tokens"] == 40 and row["n_groups"] == 2


def test_path_context_correlation_per_target_finds_routes_that_follow_the_context(monkeypatch):
    import moe_lib.site.embeddings as embeddings

    ds = contextual_trace()
    seen = []

    def by_meaning(texts, batch_size=64):
        # Contexts as points that differ by meaning: a stand-in for the encoder, tested elsewhere.
        seen.append(list(texts))
        meaning = ds["meaning"].values[ds["is_target"].values]
        return np.where((meaning == "a")[:, None], [1.0, 0.1], [0.1, 1.0])

    monkeypatch.setattr(embeddings, "cached_embeddings", by_meaning)
    table = site_tables.path_context_by_target(ds, n_permutations=50).set_index("target")
    assert seen[0][:2] == [" x c", " x c"] and len(seen[0]) == 160
    assert table.loc[" x", "spearman"] == pytest.approx(1.0) and table.loc[" x", "p_value"] == pytest.approx(1 / 51)
    assert abs(table.loc[" y", "spearman"]) < 0.2  # random routes


def test_meaning_prediction_long_stacks_accuracy_and_both_baselines():
    table = paths.meaning_prediction(contextual_trace(), n_shuffles=2)
    long = site_tables.meaning_prediction_long(table)
    assert len(long) == 3 * len(table)
    assert list(long["measure"].cat.categories) == ["path or expert", "shuffled meanings", "token's majority meaning"]
    assert "accuracy_shuffled" not in long and "first_layer" in long
    np.testing.assert_array_equal(long.loc[long["measure"] == "shuffled meanings", "accuracy"],
                                  table["accuracy_shuffled"])


def test_vocabulary_of_tokens_bound_to_one_expert_is_fully_specialised():
    # Token id t always goes to expert t; its next token is the other id.
    token_id = np.tile([0, 1], 20)
    ds = make_trace(np.stack([token_id, token_id], axis=1), 2, token_id=token_id)
    table = specialization.vocabulary_by_kind(ds, min_count=5)
    assert set(table["token_kind"]) == {"input token", "next token"}
    summary = site_tables.vocabulary_summary(table).set_index(["token_kind", "layer"])
    assert (summary.loc["input token", "specialization"] == 1).all()
    assert (summary.loc["next token", "specialization"] == 1).all()  # the next id is the other one, also fixed
    assert summary.loc[("input token", 0), "n_occurrences"] == 40
    assert summary.loc[("next token", 0), "n_occurrences"] == 39  # the last token has no next


def test_characteristic_summary_lists_tokens_in_rank_order():
    table = pd.DataFrame({"model": "m", "layer": [3, 3, 3, 0], "expert": [1, 1, 1, 1], "rank": [1, 0, 2, 0],
                          "token_str": [" b", " a", "c", "z"], "lift": [2.0, 3.0, 1.5, 9.0],
                          "share_of_token": [0.5, 0.7, 0.3, 1.0]})
    row = site_tables.characteristic_summary(table, layer=3, n_top=2).iloc[0]
    assert row["tokens"] == (" a", " b") and row["lifts"] == (3.0, 2.0)
    assert row["share_of_token"] == pytest.approx(0.6)


def test_characteristic_summary_keeps_an_expert_without_characteristic_tokens():
    # issue 14: expert 7 of a model had no token seen often enough, and its row was missing
    table = pd.DataFrame({"model": "m", "layer": 3, "expert": [1, 2], "rank": 0, "token_str": [" a", "b"],
                          "lift": [2.0, 3.0], "share_of_token": [0.5, 0.7]})
    experts = pd.DataFrame({"model": "m", "expert": [0, 1, 2]})
    summary = site_tables.characteristic_summary(table, layer=3, experts=experts)
    assert summary["expert"].tolist() == [0, 1, 2]
    assert summary.loc[0, "tokens"] == () and np.isnan(summary.loc[0, "share_of_token"])


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # the constant routes
def test_a_target_whose_occurrences_share_one_route_has_no_correlation_and_no_p_value(monkeypatch):
    import moe_lib.site.embeddings as embeddings

    ds = contextual_trace()
    ids = ds["expert_id"].values.copy()
    ids[ds["is_target"].values & (ds["target"].values == " y")] = 2  # every " y" takes route 2-2
    ds = ds.assign(expert_id=(ds["expert_id"].dims, ids))
    monkeypatch.setattr(embeddings, "cached_embeddings", lambda texts, batch_size=64: np.random.default_rng(0).
                        standard_normal((len(texts), 3)))
    table = site_tables.path_context_by_target(ds, n_permutations=20).set_index("target")
    assert np.isnan(table.loc[" y", "spearman"]) and np.isnan(table.loc[" y", "p_value"])
    assert table.loc[" x", "p_value"] > 0


@pytest.mark.filterwarnings("ignore::UserWarning:umap")
def test_route_map_table_carries_each_sampled_tokens_own_labels():
    ds = domain_trace()
    table = site_tables.route_map_table(ds, max_tokens=60)
    tokens = table["token"].to_numpy()
    np.testing.assert_array_equal(table["domain"], ds["domain"].values[tokens])
    np.testing.assert_array_equal(table["language"], ds["language"].values[tokens])
    assert (table.groupby("path")["domain"].nunique() == 1).all()  # the experts split the domains


def token_decides_domain_trace(n_per_domain: int = 100, token_follows_domain: bool = True, seed: int = 0):
    """Routes follow the domain; token ids follow it too (token 1 in A, 2 in B) or not."""
    rng = np.random.default_rng(seed)
    domain = np.repeat(["A", "B"], n_per_domain).astype(object)
    token = np.where(domain == "A", 1, 2) if token_follows_domain else rng.integers(1, 3, 2 * n_per_domain)
    routes = np.where(domain == "A", 0, 1)[:, None].repeat(2, axis=1)
    return make_trace(routes, 4, token_id=token, labels={"domain": domain})


def test_the_token_keeping_nulls_explain_domain_routes_that_token_identity_decides():
    by_token = token_decides_domain_trace()
    cover = site_tables.paths_to_cover_with_baseline(by_token, n_shuffles=5).set_index("domain")
    assert (cover["n_paths_80_shuffled"] == 2).all() and (cover["n_paths_80_token_null"] == 1).all()
    clusters = site_tables.route_cluster_agreement(by_token, n_permutations=20).set_index("label")
    assert clusters.loc["domain", "ami_token_null"] == pytest.approx(1.0) and clusters.loc["domain", "p_value_token"] == 1
    # token ids independent of the domain: within-token shuffles break the routes' domain
    free = site_tables.route_cluster_agreement(token_decides_domain_trace(token_follows_domain=False),
                                               n_permutations=20).set_index("label")
    assert abs(free.loc["domain", "ami_token_null"]) < 0.05 and free.loc["domain", "p_value_token"] < 0.1
