"""Tables as a reader sees them: the display layer between a chapter's data and its page.

A chapter's cached tables stay tidy and numeric; a table cell passes one to :func:`table`
with the columns it shows, each with a header in words and units. The result has no
index, numbers rounded (a real minus, never "-0.00"), intervals written
"+1.39 [1.36, 1.43]", empty cells empty (never "NaN"), tokens with their spaces shown,
one row group per model, and a fold around long tables. It is drawn by great_tables,
whose HTML carries its own styles (no network), and is narrow enough for the text column:
small type, headers that wrap, numbers that don't.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from great_tables import GT, loc, style

from moe_lib.site.prose import interval, number, token

FONT_SIZE = "14px"  # the page's text is 16 px; a table of numbers reads well a step smaller
FOLD_AFTER = 16  # rows: a longer table is folded, a click away


@dataclass(frozen=True)
class Column:
    """How one column is shown.

    label : the header, words with the unit in brackets, e.g. "Loss (nats/token)".
    decimals : digits after the point for numbers (None: 0 for integers, else the table's).
    kind : "auto" (by dtype), "text", "token" (quoted, spaces shown), "tokens" (a sequence
        of them), "numbers" (a sequence of numbers), "percent" (a 0-1 share shown as %),
        "yes" (a bool shown as "yes" or empty), "path" (expert ids joined by "-", kept on one
        line).
    sign : write "+" before positive numbers (differences).
    align : "left" or "right"; None: numbers right (never wrapped), the rest left.
    """

    label: str
    decimals: int | None = None
    kind: str = "auto"
    sign: bool = False
    align: str | None = None


@dataclass(frozen=True)
class Interval:
    """A column made of three: the value and its interval's bounds, shown as
    "+1.39 [1.36, 1.43]"."""

    label: str
    low: str
    high: str
    decimals: int | None = None
    sign: bool = False


def _is_integer(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series):
        return False
    if pd.api.types.is_integer_dtype(series):
        return True
    values = series.dropna()
    # a count with a missing row arrives as float: show it as a count
    return pd.api.types.is_float_dtype(series) and len(values) > 0 and bool(np.all(values == np.round(values))) \
        and bool((values.abs() >= 1).all())


def format_column(series: pd.Series, spec: Column, decimals: int) -> pd.Series:
    """Return a column's cells as display strings following ``spec`` (NaN and None give "")."""
    kind = spec.kind
    if kind == "token":
        return series.map(lambda v: "" if v is None or pd.isna(v) else token(str(v)))
    if kind == "tokens":
        return series.map(lambda values: ", ".join(token(str(v)) for v in values))
    if kind == "numbers":
        digits = decimals if spec.decimals is None else spec.decimals
        return series.map(lambda values: ", ".join(number(v, digits) for v in values))
    if kind == "yes" or (kind == "auto" and pd.api.types.is_bool_dtype(series)):
        return series.map(lambda v: "yes" if v is True or v == 1 else "")
    if kind == "path":  # non-breaking hyphens: a route split over lines reads as two
        return series.map(lambda v: "" if v is None or pd.isna(v) else str(v).replace("-", "\u2011"))
    if kind == "percent":
        digits = 0 if spec.decimals is None else spec.decimals
        return series.map(lambda v: "" if pd.isna(v) else f"{number(100 * float(v), digits)} %")
    if kind == "text" or not pd.api.types.is_numeric_dtype(series):
        return series.map(lambda v: "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v))
    digits = spec.decimals if spec.decimals is not None else (0 if _is_integer(series) else decimals)
    return series.map(lambda v: number(v, digits, sign=spec.sign))


def is_numeric_spec(frame: pd.DataFrame, name: str, spec) -> bool:
    """Return whether a shown column holds numbers (right-aligned, never wrapped)."""
    if isinstance(spec, Interval):
        return True
    if spec.align is not None:
        return spec.align == "right"
    return spec.kind in ("auto", "percent") and pd.api.types.is_numeric_dtype(frame[name]) \
        and not pd.api.types.is_bool_dtype(frame[name])


def display_frame(frame: pd.DataFrame, columns: Mapping[str, str | Column | Interval], decimals: int = 2,
                  groups: str | None = None) -> pd.DataFrame:
    """Return the strings a table shows: the ``columns`` of ``frame`` in that order, formatted,
    headers as their labels, a fresh index (never shown); ``groups`` is kept as it is."""
    specs = {name: Column(spec) if isinstance(spec, str) else spec for name, spec in columns.items()}
    missing = [n for n in [*specs, *([groups] if groups else [])] if n not in frame.columns]
    if missing:
        raise KeyError(f"table: no column(s) {missing}; the table has {list(frame.columns)}")
    shown = {}
    if groups:
        shown[groups] = frame[groups].astype(str).to_numpy()
    for name, spec in specs.items():
        if isinstance(spec, Interval):
            digits = decimals if spec.decimals is None else spec.decimals
            shown[spec.label] = [interval(v, lo, hi, digits, sign=spec.sign)
                                 for v, lo, hi in zip(frame[name], frame[spec.low], frame[spec.high])]
        else:
            shown[spec.label] = format_column(frame[name], spec, decimals).to_numpy()
    return pd.DataFrame(shown)


class Table:
    """A typeset table: ``frame`` holds the strings shown, ``gt`` the great_tables table,
    and Jupyter (so Quarto) shows its HTML, folded when it is long."""

    def __init__(self, frame: pd.DataFrame, gt: GT, folded: bool, n_rows: int):
        self.frame, self.gt, self.folded, self.n_rows = frame, gt, folded, n_rows

    def __repr__(self) -> str:
        """The shown strings as plain text, for a terminal (a page uses the HTML)."""
        return self.frame.to_string(index=False)

    def _repr_html_(self) -> str:
        body = self.gt.as_raw_html()
        if not self.folded:
            return body
        return (f'<details class="moe-folded-table"><summary>Show all {self.n_rows} rows</summary>\n'
                f"{body}\n</details>")


def table(frame: pd.DataFrame, columns: Mapping[str, str | Column | Interval], *, decimals: int = 2,
          groups: str | None = "model", fold_after: int = FOLD_AFTER, id: str | None = None) -> Table:
    """Return ``frame`` typeset for the page.

    Parameters
    ----------
    frame : the tidy table (cached data, unrounded).
    columns : the columns shown, in order: name -> header label (a string) or
        :class:`Column` / :class:`Interval` for more than the default format.
    decimals : digits of floats whose column says none.
    groups : a column whose values become row groups (one heading per model); dropped
        silently when ``frame`` lacks it or has a single value there.
    fold_after : rows beyond which the table is folded behind a "Show all" summary.
    id : the HTML id of the table (its CSS is scoped to it); stable ids keep renders alike.
    """
    if groups and (groups not in frame.columns or frame[groups].nunique() < 2):
        columns = {k: v for k, v in columns.items() if k != groups}
        groups = None
    columns = {k: v for k, v in columns.items() if k != groups}
    labels = [spec if isinstance(spec, str) else spec.label for spec in columns.values()]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:  # the shown frame is keyed by label: a repeated one would show one column twice
        raise ValueError(f"column labels {repeated} are given to more than one column; labels must be unique")
    shown = display_frame(frame.reset_index(drop=True), columns, decimals, groups)
    specs = {name: Column(spec) if isinstance(spec, str) else spec for name, spec in columns.items()}
    numeric = [spec.label for name, spec in specs.items() if is_numeric_spec(frame, name, spec)]
    text = [spec.label for spec in specs.values() if spec.label not in numeric]
    gt = (
        GT(shown, groupname_col=groups, id=id or _stable_id(shown), auto_align=False)
        .tab_options(table_font_size=FONT_SIZE, column_labels_font_size=FONT_SIZE, row_group_font_size=FONT_SIZE,
                     data_row_padding="3px", container_width="100%", table_margin_left="0")
        .cols_align("right", columns=numeric)
        .cols_align("left", columns=text)
        .tab_style(style.css("white-space: nowrap"), locations=loc.body(columns=numeric))
        .tab_style(style.text(weight="bold"), locations=loc.row_groups())
    )
    return Table(shown, gt, folded=len(shown) > fold_after, n_rows=len(shown))


def _stable_id(frame: pd.DataFrame) -> str:
    """Return an HTML id from a table's content, so a re-render writes the same page."""
    import hashlib

    digest = hashlib.sha256(html.escape(frame.to_csv(index=False)).encode()).hexdigest()[:10]
    return f"tbl-{digest}"


def transposed(frame: pd.DataFrame, key: str, rows: Mapping[str, str | Column], decimals: int = 2,
               id: str | None = None) -> Table:
    """Return a wide table of few items turned to fit the page: one row per shown column
    (its label first), one column per ``key`` value (e.g. per model), each cell formatted
    as its row says."""
    specs = {name: Column(spec) if isinstance(spec, str) else spec for name, spec in rows.items()}
    out = {"": [spec.label for spec in specs.values()]}
    for _, row in frame.iterrows():
        out[str(row[key])] = [format_column(frame[name].iloc[[_position(frame, row.name)]], spec, decimals).iloc[0]
                              for name, spec in specs.items()]
    turned = pd.DataFrame(out)
    columns = {"": Column("", kind="text"), **{c: Column(c, kind="text", align="right") for c in turned.columns[1:]}}
    return table(turned, columns, groups=None, id=id)


def _position(frame: pd.DataFrame, label) -> int:
    return int(frame.index.get_loc(label))
