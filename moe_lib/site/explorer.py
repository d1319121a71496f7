"""The routing explorer's data: what a reader can pick on the page, precomputed from traces.

Two views, each a pure function of one trace, cached by :func:`moe_lib.site.per_model`:

- :func:`occurrence_table` (contextual probe): per sampled occurrence of each polysemantic
  target, its meaning, source, top-1 route over the layers and a window of its sample's
  text with, per layer, which neighbours went to the occurrence's expert;
  :func:`route_counts` counts every occurrence's route, so the page can show which routes
  the meanings share without shipping every occurrence.
- :func:`expert_table` (domains probe): per expert of each layer, its load, its most
  frequent and most characteristic input tokens, the domain mix of its inputs, and a few
  example contexts with the tokens routed to it marked.

Cached tables hold flat columns only, so list-valued fields (a route, a window's token
pieces, its marks) are JSON strings; :mod:`moe_lib.site.explorer_page` parses them into
the page's data. A window's **marks** are one string per layer, one character per token:
``"1"`` where the token's top-1 expert is the expert in question, ``"2"`` where that expert
is in the token's top-k at a lower slot, ``"0"`` otherwise. Strings keep the page small
(a window of 21 tokens in 4 layers is 84 characters, not 84 JSON numbers).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis.common import expert_ids
from moe_lib.analysis.specialization import characteristic_tokens

# JSON without spaces: these strings go into the page as they are.
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _text_order(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(seq, pos)`` as arrays after checking that every text's tokens are
    consecutive rows in position order, as capture writes them (windows are row slices)."""
    seq, pos = np.asarray(ds["seq"].values), np.asarray(ds["pos"].values)
    same_text = seq[1:] == seq[:-1]
    if not (pos[1:][same_text] == pos[:-1][same_text] + 1).all() or np.unique(seq).size != 1 + (~same_text).sum():
        raise ValueError(f"trace of {ds.attrs.get('model')!r}: a text's tokens are not consecutive rows in "
                         "position order")
    return seq, pos


def _window(seq: np.ndarray, centre: int, half_width: int) -> tuple[int, int]:
    """Return the rows ``[start, stop)`` of up to ``half_width`` tokens either side of row
    ``centre``, within its text."""
    start, stop = max(0, centre - half_width), min(len(seq), centre + half_width + 1)
    text = seq[centre]
    start += int(np.argmax(seq[start:centre + 1] == text))
    stop = centre + 1 + int(np.sum(seq[centre + 1:stop] == text))
    return start, stop


def _marks(ids: np.ndarray, expert: int) -> str:
    """Return the marks of a window's tokens for one expert: ids (token, slot) of one layer."""
    top1, lower = ids[:, 0] == expert, (ids[:, 1:] == expert).any(axis=1)
    return "".join("1" if a else "2" if b else "0" for a, b in zip(top1, lower))


def occurrence_table(ds: xr.Dataset, n_per_meaning: int = 20, half_width: int = 10, seed: int = 0) -> pd.DataFrame:
    """Return up to ``n_per_meaning`` occurrences of each target and meaning, with their
    routes and context windows.

    Parameters
    ----------
    ds : a contextual-probe trace (token labels ``is_target``, ``target``, ``meaning``, ``source``).
    n_per_meaning : occurrences drawn per (target, meaning), seeded; all of them if fewer.
    half_width : tokens of context kept either side of the occurrence, within its sample.

    Returns
    -------
    DataFrame
        One row per drawn occurrence, ordered by target, meaning and trace row: target,
        meaning, source, token (the trace row), route (JSON list: top-1 expert per layer),
        pieces (JSON list: the window's token strings), centre (the occurrence's index in
        pieces), marks (JSON list, one string per layer: the window's marks for the
        occurrence's own top-1 expert in that layer).
    """
    ds = ds.load()
    seq, _ = _text_order(ds)
    ids = expert_ids(ds)  # (token, layer, slot)
    rows = np.flatnonzero(np.asarray(ds["is_target"].values, bool))
    labels = pd.DataFrame({name: np.asarray(ds[name].values, object)[rows] for name in ("target", "meaning", "source")})
    labels["token"] = rows
    rng = np.random.default_rng(seed)
    chosen = [group if len(group) <= n_per_meaning else group.iloc[np.sort(rng.choice(len(group), n_per_meaning,
                                                                                      replace=False))]
              for _, group in labels.groupby(["target", "meaning"], sort=True)]
    table = pd.concat(chosen, ignore_index=True)
    pieces = np.asarray(ds["token_str"].values, object)
    windows = [_window(seq, int(row), half_width) for row in table["token"]]
    table["route"] = [_compact(ids[row, :, 0].tolist()) for row in table["token"]]
    table["pieces"] = [_compact([str(p) for p in pieces[start:stop]]) for start, stop in windows]
    table["centre"] = [int(row) - start for row, (start, _) in zip(table["token"], windows)]
    table["marks"] = [_compact([_marks(ids[start:stop, layer], int(ids[row, layer, 0])) for layer in range(ids.shape[1])])
                      for row, (start, stop) in zip(table["token"], windows)]
    return table


def route_counts(ds: xr.Dataset) -> pd.DataFrame:
    """Return how many occurrences of each target and meaning take each top-1 route.

    Returns
    -------
    DataFrame
        Columns target, meaning, route (top-1 experts per layer joined by ``"-"``, e.g.
        ``"3-7-7-12"``), n_occurrences; over every occurrence of the probe, most taken first
        within each target.
    """
    rows = np.flatnonzero(np.asarray(ds["is_target"].values, bool))
    occurrences = ds.isel(token=rows)
    routes = expert_ids(occurrences, n_slots=1)[:, :, 0]
    table = pd.DataFrame({
        "target": np.asarray(occurrences["target"].values, object),
        "meaning": np.asarray(occurrences["meaning"].values, object),
        "route": ["-".join(map(str, route)) for route in routes.tolist()],
    })
    counts = table.groupby(["target", "meaning", "route"]).size().rename("n_occurrences").reset_index()
    return counts.sort_values(["target", "n_occurrences", "route", "meaning"], ascending=[True, False, True, True],
                              ignore_index=True)


def route_sharing(routes: pd.DataFrame) -> pd.DataFrame:
    """Return per target (and model, when the table has that column) how its occurrences
    spread over routes, from a :func:`route_counts` table.

    Returns
    -------
    DataFrame
        Columns [model,] target, n_occurrences, n_routes (distinct routes taken),
        top_route_share (share of the occurrences on the target's most taken route),
        shared_share (share of the occurrences whose route another meaning of the target
        takes too).
    """
    by = [c for c in ("model",) if c in routes.columns] + ["target"]
    per_route = routes.groupby(by + ["route"], observed=True).agg(n=("n_occurrences", "sum"),
                                                                   n_meanings=("meaning", "nunique"))
    per_route["shared"] = per_route["n"].where(per_route["n_meanings"] > 1, 0)
    grouped = per_route.groupby(level=by, observed=True)
    out = pd.DataFrame({"n_occurrences": grouped["n"].sum(), "n_routes": grouped.size(),
                        "top_route": grouped["n"].max(), "shared": grouped["shared"].sum()})
    return pd.DataFrame({
        "n_occurrences": out["n_occurrences"], "n_routes": out["n_routes"],
        "top_route_share": out["top_route"] / out["n_occurrences"],
        "shared_share": out["shared"] / out["n_occurrences"],
    }).reset_index()


def _top_tokens(token_str: np.ndarray, top1: np.ndarray, n_experts: int, n_top: int) -> list[list[str]]:
    """Return per expert of one layer its ``n_top`` most frequent input strings as JSON
    ``[[token, n_routed, share_of_token], ...]`` (top-1 assignments)."""
    codes, strings = pd.factorize(token_str)
    counts = np.bincount(codes * n_experts + top1, minlength=len(strings) * n_experts).reshape(len(strings), n_experts)
    per_token = counts.sum(axis=1)
    found = []
    for expert in range(n_experts):
        best = np.argsort(-counts[:, expert], kind="stable")[:n_top]
        best = best[counts[best, expert] > 0]
        found.append(_compact([[str(strings[i]), int(counts[i, expert]), round(counts[i, expert] / per_token[i], 3)]
                               for i in best]))
    return found


def _examples(ds: xr.Dataset, ids: np.ndarray, layer: int, expert: int, n_examples: int, half_width: int,
              rng: np.random.Generator) -> str:
    """Return JSON ``[{"domain", "pieces", "centre", "marks"}, ...]``: windows around up to
    ``n_examples`` tokens routed (top-1) to ``expert`` in ``layer``, each from another text."""
    seq = np.asarray(ds["seq"].values)
    routed = np.flatnonzero(ids[:, layer, 0] == expert)
    picked, texts = [], set()
    for row in rng.permutation(routed):
        if len(picked) == n_examples:
            break
        if seq[row] not in texts:
            texts.add(seq[row])
            picked.append(int(row))
    pieces, domains = np.asarray(ds["token_str"].values, object), np.asarray(ds["domain"].values, object)
    examples = []
    for row in sorted(picked):
        start, stop = _window(seq, row, half_width)
        examples.append({"domain": str(domains[row]), "pieces": [str(p) for p in pieces[start:stop]],
                         "centre": row - start, "marks": _marks(ids[start:stop, layer], expert)})
    return _compact(examples)


def expert_table(ds: xr.Dataset, n_top: int = 8, n_characteristic: int = 5, min_count: int = 20, n_examples: int = 3,
                 half_width: int = 10, seed: int = 0) -> pd.DataFrame:
    """Return one row per layer and expert: load, top input tokens, domain mix and examples.

    Parameters
    ----------
    ds : a domains-probe trace (token label ``domain``).
    n_top : most frequent input tokens listed per expert.
    n_characteristic, min_count : most characteristic tokens by lift, among tokens seen at
        least ``min_count`` times (:func:`moe_lib.analysis.specialization.characteristic_tokens`).
    n_examples, half_width : example windows per expert, each from another text, and their
        tokens of context either side.

    Returns
    -------
    DataFrame
        Columns layer, expert, n_tokens (the probe's tokens), n_top1 (tokens whose top-1
        expert it is), load (n_top1 / n_tokens; uniform 1 / n_experts), top_tokens (JSON
        ``[[token, n_routed, share_of_token]]``, by n_routed), characteristic (JSON
        ``[[token, lift, share_of_token]]``, by lift), domains (JSON ``[[domain,
        share_of_inputs, share_of_probe]]``: the share of the expert's top-1 tokens from
        each domain, summing to 1 over domains, beside the domain's share of the probe),
        examples (JSON, see ``_examples``).
    """
    ds = ds.load()
    _text_order(ds)
    n_experts, layers = int(ds.attrs["n_experts"]), ds["layer"].values
    ids = expert_ids(ds)  # (token, layer, slot)
    token_str = np.asarray(ds["token_str"].values, object)
    domain_codes, domains = pd.factorize(np.asarray(ds["domain"].values, object), sort=True)
    probe_share = np.bincount(domain_codes, minlength=len(domains)) / len(domain_codes)
    lifts = characteristic_tokens(ds, n_top=n_characteristic, min_count=min_count)
    rng = np.random.default_rng(seed)
    rows = []
    for index, layer in enumerate(layers):
        top1 = ids[:, index, 0]
        n_top1 = np.bincount(top1, minlength=n_experts)
        mix = np.bincount(top1 * len(domains) + domain_codes, minlength=n_experts * len(domains)).reshape(n_experts, -1)
        tops = _top_tokens(token_str, top1, n_experts, n_top)
        for expert in range(n_experts):
            own = lifts[(lifts["layer"] == layer) & (lifts["expert"] == expert)]
            share = mix[expert] / max(n_top1[expert], 1)
            rows.append({
                "layer": int(layer), "expert": expert, "n_tokens": len(top1), "n_top1": int(n_top1[expert]),
                "load": n_top1[expert] / len(top1), "top_tokens": tops[expert],
                "characteristic": _compact([[str(t), round(float(lift), 2), round(float(s), 3)] for t, lift, s
                                            in zip(own["token_str"], own["lift"], own["share_of_token"])]),
                "domains": _compact([[str(d), round(float(s), 4), round(float(p), 4)] for d, s, p
                                     in zip(domains, share, probe_share)] if n_top1[expert] else []),
                "examples": _examples(ds, ids, index, expert, n_examples, half_width, rng),
            })
    return pd.DataFrame(rows)
