"""analysis.information: mutual information in bits against nulls that keep what they
condition on; source-driven routing shows no meaning effect net of source (issue 12)."""

import numpy as np
import pytest
import xarray as xr

from moe_lib.analysis import information
from moe_lib.analysis.shuffles import permute_within


def test_mutual_information_of_known_distributions():
    x = np.array([0, 0, 1, 1] * 25)
    assert information.mutual_information(x, x) == pytest.approx(1.0)  # one fair bit
    assert information.mutual_information(x, np.array([0, 1] * 50)) == pytest.approx(0.0)
    # given z = x, nothing is left to know
    assert information.conditional_mutual_information(x, x, x) == pytest.approx(0.0)


def test_shuffles_keep_each_groups_labels():
    rng = np.random.default_rng(0)
    labels, groups = rng.integers(0, 3, 300), rng.integers(0, 5, 300)
    shuffled = permute_within(labels, groups, rng)
    assert not (shuffled == labels).all()
    for group in range(5):
        assert np.array_equal(np.bincount(shuffled[groups == group], minlength=3),
                              np.bincount(labels[groups == group], minlength=3))


def occurrences(route, n=400, seed=0) -> xr.Dataset:
    """A contextual trace of target occurrences of two tokens, each with two meanings drawn
    from two sources; ``route(token, meaning, source, rng)`` gives the top-1 expert."""
    rng = np.random.default_rng(seed)
    token = rng.integers(0, 2, n)
    source = rng.integers(0, 2, n)
    # meaning goes with source 80 % of the time: the confound of the probe
    meaning = np.where(rng.random(n) < 0.8, source, 1 - source)
    expert = np.array([route(t, m, s, rng) for t, m, s in zip(token, meaning, source)])
    ids = np.stack([expert, (expert + 1) % 8], axis=-1)[:, None, :].astype(np.int16)  # (token, layer, slot)
    return xr.Dataset(
        {"expert_id": (("token", "layer", "slot"), ids)},
        coords={"layer": [0], "token_id": ("token", token + 100), "meaning": ("token", meaning.astype(str)),
                # each sample's own place, as the probe labels it; its genre is the part before ":"
                "source": ("token", [f"{('speech', 'dictionary')[s]}:doc{i}:line {i} [validation]"
                                     for i, s in enumerate(source)]),
                "is_target": ("token", np.ones(n, bool))})


def excess(ds) -> dict:
    table = information.expert_information(ds, n_perm=100)
    return table.set_index("measure")["excess"].to_dict()


def test_routing_by_source_alone_leaves_no_meaning_effect_net_of_source():
    found = excess(occurrences(lambda t, m, s, rng: 2 * t + s))
    assert found["I(E; M | T)"] > 0.2  # meaning seems to matter: it rides on source
    assert found["I(E; S | T)"] > 0.5
    assert abs(found["I(E; M | T, S)"]) < 0.02


def test_routing_by_meaning_within_source_is_found():
    found = excess(occurrences(lambda t, m, s, rng: 2 * t + m))
    assert found["I(E; M | T, S)"] > 0.3
    assert found["I(E; T)"] > 0.5


def test_random_routing_sits_at_its_null():
    found = excess(occurrences(lambda t, m, s, rng: int(rng.integers(0, 8))))
    assert all(abs(v) < 0.05 for v in found.values())


def test_left_context_counts_only_contentful_tokens_before_each_token_in_its_sequence():
    ds = xr.Dataset(coords={"seq": ("token", [0, 0, 0, 1, 1, 1]), "pos": ("token", [2, 0, 1, 0, 1, 2]),
                            "token_str": ("token", ["#", " ", "\n", "the", " ", " bank"])})
    # sequence 0 read in order of pos: " ", "\n", "#"; sequence 1: "the", " ", " bank"
    assert information.left_context_tokens(ds).tolist() == [0, 0, 0, 0, 1, 1]


def test_meaning_is_measured_apart_where_the_model_read_nothing_before_the_target():
    rng = np.random.default_rng(1)
    n = 400
    meaning = rng.integers(0, 2, n)
    with_context = np.arange(n) % 2 == 0
    # routes follow meaning only where there was text to read it from
    expert = np.where(with_context, meaning, rng.integers(0, 2, n))
    # each occurrence is its own sample: one token before the target, a word or a blank
    ids = np.repeat(np.stack([expert, expert + 2], axis=-1)[:, None, :], 2, axis=0).astype(np.int16)
    ds = xr.Dataset(
        {"expert_id": (("token", "layer", "slot"), ids)},
        coords={"layer": [0], "seq": ("token", np.repeat(np.arange(n), 2)), "pos": ("token", np.tile([0, 1], n)),
                "token_str": ("token", np.ravel([["word" if c else " ", " bank"] for c in with_context])),
                "token_id": ("token", np.tile([5, 100], n)),
                "meaning": ("token", np.ravel([["", str(m)] for m in meaning])),
                "source": ("token", np.full(2 * n, "speech")),
                "is_target": ("token", np.tile([False, True], n))})
    table = information.expert_information_by_context(ds, n_perm=50)
    meaning_bits = table[table.measure == "I(E; M | T)"].set_index("context").excess
    assert meaning_bits["some"] > 0.8 and abs(meaning_bits["none"]) < 0.05
    assert set(table.n_occurrences) == {n // 2}
