"""The routing explorer as HTML: the page's data from the explorer tables, and one
self-contained widget (data, style and script inlined) that the Quarto page shows as a cell's
HTML output and :func:`write_standalone` wraps in a page of its own.

One implementation serves both, so what the browser tests load is what the site shows, and
it needs no network: no library, no font, no fetch. ``python -m moe_lib.site.explorer_page
OUT.html`` writes the standalone page from the cache, for a look without Quarto.
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
from importlib import resources
from pathlib import Path

import pandas as pd

# The cap on the data a page ships (bytes of the inlined JSON), and the budget
# page_data fits the drawn occurrences into, whatever the number of models.
MAX_PAGE_BYTES = 2_000_000
PAGE_BUDGET = 1_500_000
MAX_ROUTES_SHOWN = 12  # rows of the shared-routes table: a meaning's most taken routes
CARDS_PAGE = "experts.html"  # the per-expert cards, beside the explorer in chapters/
# Draws per page: with the default models' 4 layers, 16 experts and the contextual probe's
# 80 meanings, 20 occurrences per meaning and 3 examples per expert come to about 1.25 MB for
# two models (a synthetic stand-in of that size, tests/test_explorer.py), under PAGE_BUDGET.
N_PER_MEANING = 20
N_EXAMPLES = 3

_ids = itertools.count()


def _target_data(occurrences: pd.DataFrame, routes: pd.DataFrame) -> list[dict]:
    """Return one model's targets: meanings with their drawn occurrences, and the routes the
    page shows (each meaning's :data:`MAX_ROUTES_SHOWN` most taken) with their counts per
    meaning, most taken first."""
    targets = []
    for target, counts in routes.groupby("target", sort=True):
        drawn = occurrences[occurrences["target"] == target]
        by_route = counts.pivot_table(index="route", columns="meaning", values="n_occurrences", aggfunc="sum",
                                      fill_value=0)
        by_route = by_route.loc[by_route.sum(axis=1).sort_values(ascending=False, kind="stable").index]
        shown = set()
        meanings = []
        for meaning in by_route.columns:
            taken = by_route[meaning][by_route[meaning] > 0]
            shown |= set(taken.sort_values(ascending=False, kind="stable").index[:MAX_ROUTES_SHOWN])
            rows = drawn[drawn["meaning"] == meaning]
            meanings.append({"meaning": str(meaning), "n_occurrences": int(taken.sum()), "n_routes": len(taken),
                             "occurrences": [{"source": str(row.source), "route": json.loads(row.route),
                                              "pieces": json.loads(row.pieces), "centre": int(row.centre),
                                              "marks": json.loads(row.marks)} for row in rows.itertuples()]})
        route_rows = [{"route": [int(e) for e in route.split("-")],
                       "counts": {str(m): int(n) for m, n in row.items() if n}}
                      for route, row in by_route.iterrows() if route in shown]
        targets.append({"target": str(target), "meanings": meanings, "routes": route_rows})
    return targets


def _expert_data(experts: pd.DataFrame) -> list[list[dict]]:
    """Return one model's experts, a list per layer in layer order, each in expert order."""
    layers = []
    for _, part in experts.sort_values(["layer", "expert"]).groupby("layer", sort=True):
        layers.append([{"expert": int(row.expert), "n_tokens": int(row.n_tokens), "n_top1": int(row.n_top1),
                        "load": float(row.load), "top_tokens": json.loads(row.top_tokens),
                        "characteristic": json.loads(row.characteristic), "domains": json.loads(row.domains),
                        "examples": json.loads(row.examples)} for row in part.itertuples()])
    return layers


def page_data(occurrences: pd.DataFrame, routes: pd.DataFrame, experts: pd.DataFrame, min_count: int = 20) -> dict:
    """Return the explorer's data, JSON-native: per model its layers, targets and experts.

    Parameters
    ----------
    occurrences, routes, experts : ``site.per_model`` tables of
        :func:`moe_lib.site.explorer.occurrence_table`, ``route_counts`` and ``expert_table``
        (a ``model`` column; models appear in its order).
    min_count : the ``min_count`` the expert table's characteristic tokens were found with
        (the page says so when an expert has none).
    """
    names = [str(m) for m in pd.unique(experts["model"])]
    models = []
    for name in names:
        own_experts = experts[experts["model"] == name]
        layers = sorted(int(layer) for layer in own_experts["layer"].unique())
        models.append({
            "name": name, "layers": layers, "n_experts": int(own_experts["expert"].max()) + 1,
            "targets": _target_data(occurrences[occurrences["model"] == name], routes[routes["model"] == name]),
            "experts": _expert_data(own_experts),
        })
    data = {"models": models, "cards_page": CARDS_PAGE, "max_routes_shown": MAX_ROUTES_SHOWN, "min_count": min_count}
    return _fit(data, PAGE_BUDGET)


def _fit(data: dict, budget: int) -> dict:
    """Return ``data`` with as many drawn occurrences per meaning as fit in ``budget`` bytes
    (the same number for every meaning, at least one): the occurrences are most of a page,
    and a site with more models cached must still fit. The page says how many it shows."""
    lists = [m["occurrences"] for model in data["models"] for t in model["targets"] for m in t["meanings"]]
    size = len(data_json(data).encode())
    while size > budget and max(map(len, lists), default=0) > 1:
        keep = max(1, int(max(map(len, lists)) * budget / size))  # occurrences are about proportional to size
        for occurrences in lists:
            del occurrences[keep:]
        size = len(data_json(data).encode())
    return data


def data_json(data: dict) -> str:
    """Return the data as compact JSON, safe inside a ``<script>`` element (no ``</``)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")


def asset(name: str) -> str:
    """Return the text of a file shipped beside this module (the explorer's script and style)."""
    return resources.files("moe_lib.site").joinpath(name).read_text(encoding="utf-8")


def widget_html(data: dict) -> str:
    """Return the explorer as one HTML fragment: a mount point, its style, its data and its script.

    Raises
    ------
    ValueError
        When the data exceed :data:`MAX_PAGE_BYTES` (draw fewer occurrences or examples).
    """
    payload = data_json(data)
    if len(payload.encode()) > MAX_PAGE_BYTES:
        raise ValueError(f"the explorer's data take {len(payload.encode()):,} bytes, over the page's cap of "
                         f"{MAX_PAGE_BYTES:,}; draw fewer occurrences per meaning or fewer examples per expert")
    root = f"moe-explorer-{next(_ids)}"
    return (f'<div class="moe-explorer" id="{root}"><noscript>The routing explorer needs JavaScript.</noscript></div>\n'
            f"<style>{asset('explorer.css')}</style>\n"
            f'<script type="application/json" id="{root}-data">{payload}</script>\n'
            f"<script>{asset('explorer.js')}\nmountRoutingExplorer(document.getElementById({json.dumps(root)}), "
            f"JSON.parse(document.getElementById({json.dumps(root + '-data')}).textContent));</script>\n")


def widget(occurrences: pd.DataFrame, routes: pd.DataFrame, experts: pd.DataFrame):
    """Return the explorer of the tables as an IPython HTML display (a chapter cell's output)."""
    from IPython.display import HTML

    return HTML(widget_html(page_data(occurrences, routes, experts)))


def standalone_html(fragment: str, title: str = "Routing explorer") -> str:
    """Return a complete HTML page around a widget fragment (UTF-8, no external resource)."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            "<style>body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 1.5rem auto; padding: 0 1rem; }"
            "</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{fragment}</body>\n</html>\n")


def token_tables(models: list[str], n_per_meaning: int = N_PER_MEANING) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the token view's cached tables for ``models``: ``(occurrences, routes)``."""
    from moe_lib import site
    from moe_lib.site import explorer

    return (site.per_model("explorer-occurrences", models, explorer.occurrence_table, probe="contextual",
                           n_per_meaning=n_per_meaning),
            site.per_model("explorer-routes", models, explorer.route_counts, probe="contextual"))


def expert_tables(models: list[str], n_examples: int = N_EXAMPLES) -> pd.DataFrame:
    """Return the expert view's cached table for ``models`` (the expert cards read it too)."""
    from moe_lib import site
    from moe_lib.site import explorer

    return site.per_model("explorer-experts", models, explorer.expert_table, n_examples=n_examples)


def write_standalone(path: Path, models: list[str]) -> Path:
    """Write the standalone explorer of ``models`` (from the cache, made if missing) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(standalone_html(widget_html(page_data(*token_tables(models), expert_tables(models)))), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m moe_lib.site.explorer_page OUT.html [--models M ...]``: the standalone explorer."""
    from moe_lib import site

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", nargs="+", default=None, help="default: the site's models")
    args = parser.parse_args(argv)
    print(write_standalone(args.out, site.models(args.models)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
