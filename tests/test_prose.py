"""Numbers in the prose read as a reader says them (issue 14)."""

import math

import pandas as pd
import pytest

from moe_lib.site import prose


@pytest.mark.parametrize(("value", "decimals", "sign", "expected"), [
    (0.1549, 2, False, "0.15"),
    (-0.0004, 2, False, "0.00"),  # never "-0.00"
    (-0.0004, 2, True, "0.00"),  # nor "+0.00"
    (-0.123, 2, False, "\u22120.12"),
    (1.39, 2, True, "+1.39"),
    (1234567, 0, False, "1,234,567"),
    (math.nan, 2, False, ""),
    (None, 2, False, ""),
])
def test_number(value, decimals, sign, expected):
    assert prose.number(value, decimals, sign=sign) == expected


def test_interval_is_value_then_bounds():
    assert prose.interval(1.391, 1.362, 1.428, sign=True) == "+1.39 [1.36, 1.43]"
    assert prose.interval(-0.02, -0.05, 0.01, sign=True) == "\u22120.02 [\u22120.05, 0.01]"
    assert prose.interval(math.nan, 0, 1) == ""
    assert prose.interval(7.2512, math.nan, math.nan, 3) == "7.251"  # no "[, ]" where there is no interval


def test_span_says_one_number_when_the_range_rounds_to_one():
    assert prose.span([0.151, 0.149]) == "0.15"
    assert prose.span([0.12, 0.15], unit="nats") == "0.12 to 0.15 nats"
    with pytest.raises(ValueError, match="empty"):
        prose.span([])


def test_per_model_pools_only_where_the_models_agree():
    agree = pd.Series([0.151, 0.149], index=["standard-default", "cross-layer-default"])
    assert prose.per_model(agree) == "0.15 in both models"
    differ = pd.Series([0.81, 0.80, 0.74], index=["standard-default", "standard-default", "cross-layer-default"])
    assert prose.per_model(differ) == "0.80 to 0.81 in standard-default and 0.74 in cross-layer-default"
    three = pd.Series([1.0, 1.0, 1.0], index=["a", "b", "c"])
    assert prose.per_model(three, decimals=1) == "1.0 in all three models"
    assert prose.per_model(pd.Series([2.0], index=["a"])) == "2.00 in a"


def test_per_model_follows_the_categorical_order_of_the_models():
    index = pd.CategoricalIndex(["b", "a"], categories=["a", "b"], ordered=True)
    assert prose.per_model(pd.Series([1.0, 2.0], index=index)) == "2.00 in a and 1.00 in b"


def test_per_model_needs_the_model_in_the_index():
    with pytest.raises(TypeError, match="indexed by model"):
        prose.per_model([0.1, 0.2])


@pytest.mark.parametrize(("n", "expected"), [(0, "no dead expert"), (1, "1 dead expert"), (3, "3 dead experts")])
def test_count(n, expected):
    assert prose.count(n, "dead expert") == expected


@pytest.mark.parametrize(("n", "total", "expected"), [
    (0, 2, "no model reaches"),
    (1, 2, "one of the 2 models reaches"),
    (2, 2, "both models reach"),
    (3, 5, "3 of the 5 models reach"),
    (5, 5, "all 5 models reach"),
    (1, 1, "the model reaches"),
])
def test_how_many_agrees_with_its_verb(n, total, expected):
    assert prose.how_many(n, total, "model", verb=("reaches", "reach")) == expected


def test_how_many_refuses_impossible_counts():
    with pytest.raises(ValueError):
        prose.how_many(3, 2, "model")


def test_tokens_show_their_spaces_inside_quotes_that_face_the_right_way():
    assert prose.token(" bank") == "\u201c\u2423bank\u201d"
    assert prose.token(",") == "\u201c,\u201d"
    assert prose.token("\n") == "\u201c\\n\u201d"
    assert prose.tokens([" the", ","]) == "\u201c\u2423the\u201d and \u201c,\u201d"


def test_phrases_display_as_markdown_without_quotes():
    phrase = prose.count(2, "model")
    assert repr(phrase) == "2 models" and phrase._repr_markdown_() == "2 models"
    assert prose.percent(0.234) == "23 %"


def test_a_phrase_can_open_a_sentence_and_stays_a_phrase():
    opening = prose.how_many(0, 2, "model", verb=("reaches", "reach")).capitalize()
    assert opening == "No model reaches" and isinstance(opening, prose.Phrase)
    assert prose.per_model(pd.Series([1.0], index=["standard-default"])).capitalize() == "1.00 in standard-default"
