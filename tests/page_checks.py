"""What a reader would see wrong on an executed page, found in its notebook's outputs
(issue 14): raw pandas tables, "NaN" in a table, figures whose PNG is not as wide as the
page shows it. The browser tests check the same pages as laid out by Chromium.
"""

from __future__ import annotations

import base64
import re

from moe_lib import plots

WIDE_COLUMNS = {"page-right", "page", "screen", "screen-inset-right", "page-inset-right"}
RAW_PANDAS = re.compile(r'class="dataframe"')  # pandas' own HTML, the index column and all
CELL_TEXT = re.compile(r"<t[dh][^>]*>(.*?)</t[dh]>", re.DOTALL)


def is_wide(options: dict) -> bool:
    """Return whether a cell's Quarto options put its figure across the column and margin."""
    return str(options.get("column", options.get("fig-column", ""))) in WIDE_COLUMNS


def png_width(data) -> int:
    """Return the width in pixels in a PNG's header (bytes, or base64 as notebooks keep it)."""
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return int.from_bytes(raw[16:20], "big")


def output_problems(notebook) -> list[str]:
    """Return one line per problem a reader would see in the displayed outputs of a page's
    labelled cells (``fig-`` and ``tbl-``)."""
    problems = []
    for cell in notebook.cells:
        options = cell.metadata.get("quarto", {})
        label = str(options.get("label", ""))
        if not label.startswith(("fig-", "tbl-")):
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                expected = plots.figure_width_px(wide=is_wide(options))
                pixels = png_width(data["image/png"])
                shown = output.get("metadata", {}).get("image/png", {}).get("width")
                if not pixels == shown == expected:
                    problems.append(f"{label}: PNG {pixels} px wide, shown at {shown} px, the page's "
                                    f"{'wide' if is_wide(options) else 'column'} width is {expected} px")
            html = data.get("text/html", "")
            if isinstance(html, list):
                html = "".join(html)
            if label.startswith("tbl-") and not html:
                problems.append(f"{label}: no HTML table (a table printed as text?)")
            if RAW_PANDAS.search(html):
                problems.append(f"{label}: a raw pandas table (index column and all)")
            cells = [re.sub(r"<[^>]+>", "", c).strip() for c in CELL_TEXT.findall(html)]
            bad = [c for c in cells if c in ("NaN", "nan", "None", "<NA>", "NaT") or re.fullmatch(r"-0(\.0+)?", c)]
            if bad:
                problems.append(f"{label}: cells reading {sorted(set(bad))}")
    return problems
