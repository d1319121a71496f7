"""Tests of moe_lib.analysis.token_controls and the block-wise within-group shuffles."""

import numpy as np
import pandas as pd
import pytest
from helpers_traces import make_trace, random_trace

from moe_lib.analysis import chunked_within, specialization, token_controls
from moe_lib.analysis.chunked import is_chunked
from moe_lib.core.trace_store import open_trace


def domains_with_tokens(route_by_domain: bool, n: int = 6000, seed: int = 0):
    """Tokens 0..19, each domain using its own half of them mostly. The route is the token's
    own expert (0-3 for tokens below 10, 4-7 above), or, with ``route_by_domain``, one of
    the domain's own four experts (code 0-3, prose 4-7) whatever the token."""
    rng = np.random.default_rng(seed)
    domain = rng.integers(0, 2, n)
    token = np.where(rng.random(n) < 0.8, domain * 10, (1 - domain) * 10) + rng.integers(0, 10, n)
    expert = (4 * domain if route_by_domain else (token // 10) * 4) + token % 4
    return make_trace(expert[:, None], 8, token_id=token,
                      labels={"domain": np.array(["code", "prose"], dtype=object)[domain]})


def test_a_domain_effect_made_by_token_identity_is_all_within_token():
    ds = domains_with_tokens(route_by_domain=False)
    table = token_controls.domain_tv_within_token(ds, n_permutations=10)
    plain = specialization.domain_tv_distance(ds, n_permutations=10)
    np.testing.assert_allclose(table["tv_distance"], plain["tv_distance"])  # the same measure
    assert (table["tv_distance"] > 5 * plain["tv_shuffled"]).all()  # a large domain "effect" ...
    np.testing.assert_allclose(table["tv_within"], table["tv_distance"], atol=0.03)  # ... all from tokens
    assert table["n_tokens"].sum() == 6000


def test_a_domain_effect_on_routing_within_tokens_stays_above_the_null():
    table = token_controls.domain_tv_within_token(domains_with_tokens(route_by_domain=True), n_permutations=10)
    assert (table["tv_distance"] > table["tv_within_q95"] + 0.2).all()


def test_domain_tv_within_token_names_a_missing_variable():
    with pytest.raises(KeyError, match="no token variable 'lemma'"):
        token_controls.domain_tv_within_token(domains_with_tokens(False), within="lemma")


def test_next_tokens_that_follow_from_the_input_are_explained_by_it():
    # The next token is fixed by the input token (t -> t + 1) and routing by the input token:
    # next-token specialization is perfect, and entirely what the input token tells.
    rng = np.random.default_rng(1)
    token = rng.integers(0, 30, 4000)
    ds = make_trace((token % 8)[:, None], 8, token_id=token)
    table = token_controls.specialization_within_input(ds, token + 1, min_count=5)
    assert (table["specialization"] == 1.0).all()
    np.testing.assert_allclose(table["specialization_within"], 1.0)
    shuffled = specialization.vocabulary_specialization(ds, token + 1, min_count=5)
    assert shuffled["specialization_shuffled"].mean() < 0.5  # the unconditional null misses it
    with pytest.raises(ValueError, match="token_ids has shape"):
        token_controls.specialization_within_input(ds, token[:-1])


def test_routing_by_the_next_token_itself_stays_above_the_null():
    rng = np.random.default_rng(2)
    token, following = rng.integers(0, 4, 6000), rng.integers(0, 30, 6000)
    ds = make_trace((following % 8)[:, None], 8, token_id=token)  # routed by what comes next
    table = token_controls.specialization_within_input(ds, following, min_count=5)
    assert (table["specialization"] == 1.0).all()
    assert table["specialization_within"].max() < 0.4


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """The same trace with predictions in memory and opened from Zarr in blocks of 700 tokens."""
    ds = random_trace(n_tokens=5000, n_layers=3, n_experts=8, top_k=2, seed=4, seq_len=37)
    predicted = np.random.default_rng(5).integers(0, 50, ds.sizes["token"]).astype(np.int32)
    ds = ds.assign(predicted_id=("token", predicted)).assign_attrs(vocab_size=50)
    path = tmp_path_factory.mktemp("controls") / "t.zarr"
    chunks = {name: {"chunks": (700,) + var.shape[1:]} for name, var in ds.variables.items() if "token" in var.dims}
    ds.to_zarr(path, consolidated=False, encoding=chunks)
    chunked = open_trace(path, chunks={"token": 700})
    assert is_chunked(chunked)
    return ds, chunked


def test_output_tokens_match_the_plain_measure_in_memory_and_in_blocks(traces):
    ds, chunked = traces
    expected = token_controls.output_tokens_within_input(ds)
    assert set(expected["token_kind"]) == {"next token", "predicted next token"}
    plain = specialization.vocabulary_by_kind(ds)
    plain = plain[plain.token_kind != "input token"].reset_index(drop=True)
    columns = ["token_kind", "layer", "token_id", "n_occurrences", "specialization"]
    pd.testing.assert_frame_equal(expected[columns], plain[columns], check_dtype=False)
    actual = token_controls.output_tokens_within_input(chunked)
    pd.testing.assert_frame_equal(expected[columns], actual[columns], check_dtype=False)
    # the null is drawn by block there: another draw, the same expectation
    assert abs(actual["specialization_within"].mean() - expected["specialization_within"].mean()) < 0.02


def test_domain_tv_within_token_in_blocks_equals_in_memory(traces):
    ds, chunked = traces
    expected = token_controls.domain_tv_within_token(ds, n_permutations=4)
    actual = token_controls.domain_tv_within_token(chunked, n_permutations=4)
    columns = ["layer", "domain", "n_tokens", "tv_distance"]
    pd.testing.assert_frame_equal(expected[columns], actual[columns], check_dtype=False)
    np.testing.assert_allclose(actual["tv_within"], expected["tv_within"], atol=0.05)


def test_within_group_draws_deal_each_group_its_own_values_in_each_blocks_share():
    rng = np.random.default_rng(3)
    blocks = [(rng.integers(0, 6, size), rng.integers(0, 4, size)) for size in (50, 1, 80, 0, 33)]
    pairs = [chunked_within.pair_counts(groups, values) for groups, values in blocks]
    groups_all, original = (np.concatenate(part) for part in zip(*blocks))
    dealt_by_seed = []
    for seed in range(40):
        draws = chunked_within.within_group_draws(pairs, seed, max_items=20)  # several batches of groups
        dealt = [chunked_within.shuffled_block_values_within(groups, draw, seed, b)
                 for b, ((groups, _), draw) in enumerate(zip(blocks, draws))]
        dealt = np.concatenate(dealt)
        # every group keeps its multiset of values
        pd.testing.assert_frame_equal(pd.crosstab(groups_all, original), pd.crosstab(groups_all, dealt))
        dealt_by_seed.append(dealt)
    # and it is a shuffle: values move between blocks and tokens from draw to draw
    assert np.mean([np.mean(d == original) for d in dealt_by_seed]) < 0.6
    assert len({d.tobytes() for d in dealt_by_seed}) == 40


def test_a_block_whose_groups_do_not_match_its_draw_is_refused():
    draw = chunked_within.pair_counts(np.array([0, 0, 1]), np.array([5, 6, 5]))
    with pytest.raises(ValueError, match="block 2"):
        chunked_within.shuffled_block_values_within(np.array([0, 1, 1]), draw, seed=0, block=2)


def test_occurrence_weighted_means():
    table = pd.DataFrame({"token_kind": "k", "layer": 0, "n_occurrences": [1, 3], "specialization": [1.0, 0.5]})
    row = token_controls.occurrence_weighted(table, ["specialization"]).iloc[0]
    assert row["specialization"] == pytest.approx(0.625) and row["n_occurrences"] == 4
