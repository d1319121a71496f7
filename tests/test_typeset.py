"""Tables are typeset, not printed (issue 14): no index, rounded numbers, intervals as
"+1.39 [1.36, 1.43]", empty cells empty, long tables folded, HTML with no network."""

import re

import numpy as np
import pandas as pd
import pytest

from moe_lib.site import typeset
from moe_lib.site.typeset import Column, Interval


@pytest.fixture
def frame():
    # an index that jumps, as a filtered table's does
    return pd.DataFrame({
        "model": ["standard-default", "standard-default", "cross-layer-default"],
        "layer": [0, 3, 0],
        "loss": [4.7412, -0.00004, np.nan],
        "lo": [4.70, -0.01, np.nan], "hi": [4.78, 0.01, np.nan],
        "n_tokens": [12000.0, 800.0, np.nan],
        "token": [" bank", ",", None],
    }, index=[0, 30, 35])


def test_display_frame_formats_every_column_as_its_spec_says(frame):
    shown = typeset.display_frame(frame, {
        "layer": "MoE layer", "loss": Column("Loss (nats/token)", decimals=3),
        "n_tokens": "Tokens", "token": Column("Token", kind="token"),
    })
    assert list(shown.columns) == ["MoE layer", "Loss (nats/token)", "Tokens", "Token"]
    assert list(shown.index) == [0, 1, 2]
    assert shown["Loss (nats/token)"].tolist() == ["4.741", "0.000", ""]  # no "-0.000", no "nan"
    assert shown["Tokens"].tolist() == ["12,000", "800", ""]  # a count with a gap stays a count
    assert shown["Token"].tolist() == ["\u201c\u2423bank\u201d", "\u201c,\u201d", ""]


def test_a_path_stays_on_one_line():
    shown = typeset.display_frame(pd.DataFrame({"path": ["4-9-9-15", None]}), {"path": Column("Path", kind="path")})
    assert shown["Path"].tolist() == ["4\u20119\u20119\u201115", ""]  # non-breaking hyphens: no line break inside


def test_intervals_are_value_then_bounds(frame):
    shown = typeset.display_frame(frame, {"loss": Interval("Loss", "lo", "hi", sign=True)})
    assert shown["Loss"].tolist() == ["+4.74 [4.70, 4.78]", "0.00 [\u22120.01, 0.01]", ""]


def test_unknown_columns_are_named(frame):
    with pytest.raises(KeyError, match="no column"):
        typeset.display_frame(frame, {"accuracy": "Accuracy"})


def test_a_label_given_to_two_columns_is_refused(frame):
    with pytest.raises(ValueError, match=r"column labels \['p'\] are given to more than one column"):
        typeset.table(frame, {"loss": Column("p", decimals=3), "n_tokens": "p"})


def test_table_html_has_no_index_no_nan_and_no_network(frame):
    html = typeset.table(frame, {"layer": "MoE layer", "loss": "Loss", "n_tokens": "Tokens"})._repr_html_()
    assert "NaN" not in html and "nan<" not in html and "None" not in html
    assert not re.search(r"(src|href)=\"?https?://", html) and "@import" not in html
    headers = re.findall(r'<th[^>]*class="gt_col_heading[^"]*"[^>]*>(.*?)</th>', html, re.DOTALL)
    assert [h.strip() for h in headers] == ["MoE layer", "Loss", "Tokens"]  # no index column
    # one row group per model, the model column gone from the body
    assert html.count('class="gt_group_heading"') == 2
    assert "white-space: nowrap" in html


def test_table_without_several_models_has_no_groups(frame):
    one = frame[frame.model == "standard-default"]
    shown = typeset.table(one, {"model": "Model", "layer": "MoE layer"})
    assert 'class="gt_group_heading"' not in shown._repr_html_() and list(shown.frame.columns) == ["MoE layer"]


def test_long_tables_are_folded_and_ids_are_stable(frame):
    long = pd.concat([frame] * 10, ignore_index=True)
    folded = typeset.table(long, {"layer": "MoE layer"}, fold_after=16)
    assert folded.folded and folded._repr_html_().startswith("<details")
    assert "Show all 30 rows" in folded._repr_html_()
    again = typeset.table(long, {"layer": "MoE layer"}, fold_after=16)
    assert again._repr_html_() == folded._repr_html_()  # same data, same page
    assert not typeset.table(frame, {"layer": "MoE layer"})._repr_html_().startswith("<details")


def test_transposed_puts_items_in_columns():
    models = pd.DataFrame({"model": ["a", "b"], "layers": [4, 4], "val_loss": [4.7412, 4.8318],
                           "training_tokens": [4096000, 4096000]})
    turned = typeset.transposed(models, "model", {"layers": "MoE layers", "val_loss": Column("Loss (nats/token)"),
                                                  "training_tokens": "Training tokens"})
    assert list(turned.frame.columns) == ["", "a", "b"]
    assert turned.frame[""].tolist() == ["MoE layers", "Loss (nats/token)", "Training tokens"]
    assert turned.frame["a"].tolist() == ["4", "4.74", "4,096,000"]
