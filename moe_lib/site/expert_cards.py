"""Per-expert cards: one static card per model, layer and expert, with an anchor the explorer
links to (``#standard-default-L2-E7``).

A card shows what :func:`moe_lib.site.explorer.expert_table` holds (load, most frequent and
most characteristic input tokens, domain mix, example contexts with the routed tokens
marked) and, when given, the expert's **importance**: any per-expert measure table with
columns ``model``, ``layer``, ``expert`` (e.g. the change of held-out loss when the expert
is removed, :func:`moe_lib.site.importance.card_importance`), each other column shown under
its name. A model without that analysis cached gets cards that say nothing of importance.

The output is Markdown for a cell with ``output: asis``: a heading per model and layer (so
Quarto's table of contents lists them) and each layer's cards as a raw HTML block.
"""

from __future__ import annotations

import html
import json

import pandas as pd

from moe_lib.site.explorer_page import asset


def card_id(model: str, layer: int, expert: int) -> str:
    """Return the anchor of an expert's card, as the explorer links to it."""
    return f"{model}-L{int(layer)}-E{int(expert)}"


def _text(value) -> str:
    """Return ``value`` escaped for HTML inside a fenced raw block: backticks too, so a token
    holding a Markdown fence cannot close the block."""
    return html.escape(str(value)).replace("`", "&#96;")


def _token(token: str) -> str:
    return f"<code>{_text(json.dumps(token, ensure_ascii=False))}</code>"


def _context(pieces: list[str], marks: str, centre: int) -> str:
    """Return a window of tokens as spans classed by their marks, as the explorer draws it."""
    spans = [f'<span class="mx-token mx-mark-{mark}{" mx-centre" if i == centre else ""}">'
             f"{_text(piece.replace(chr(10), '⏎'))}</span>" for i, (piece, mark) in enumerate(zip(pieces, marks))]
    return f'<span class="mx-context">{"".join(spans)}</span>'


def _importance_line(row: pd.Series | None) -> str:
    if row is None:
        return ""
    measures = ", ".join(f"{_text(name)}: {value:.3g}" if isinstance(value, float) else f"{_text(name)}: {_text(value)}"
                         for name, value in row.items())
    return f'<p class="mx-importance"><strong>Importance</strong>: {measures}</p>'


def card_html(model: str, row, n_experts: int, importance: pd.Series | None = None) -> str:
    """Return one expert's card: ``row`` is a row (namedtuple) of the expert table."""
    top = ", ".join(f"{_token(t)} {n} ({100 * s:.0f} %)" for t, n, s in json.loads(row.top_tokens))
    characteristic = ", ".join(f"{_token(t)} ×{lift:.1f}" for t, lift, _ in json.loads(row.characteristic)) or "none"
    largest = max([max(s, p) for _, s, p in json.loads(row.domains)] or [1.0])
    domains = "".join(
        f'<tr><td>{_text(d)}</td><td>{100 * s:.1f} %</td><td>{100 * p:.1f} %</td><td><span class="mx-bars">'
        f'<span class="mx-bar mx-bar-expert" style="width: {100 * s / largest:.1f}%"></span>'
        f'<span class="mx-bar mx-bar-probe" style="width: {100 * p / largest:.1f}%"></span></span></td></tr>'
        for d, s, p in json.loads(row.domains))
    examples = "".join(f'<li>{_context(x["pieces"], x["marks"], x["centre"])}<span class="mx-source">{_text(x["domain"])}'
                       "</span></li>" for x in json.loads(row.examples))
    return (f'<article class="mx-card" id="{_text(card_id(model, row.layer, row.expert))}">'
            f"<h4>Expert {row.expert} · layer {row.layer}</h4>"
            f"<p>Top-1 expert of {row.n_top1:,} of {row.n_tokens:,} tokens ({100 * row.load:.1f} %; "
            f"even split {100 / n_experts:.1f} %).</p>"
            f"{_importance_line(importance)}"
            f"<p><strong>Most frequent inputs</strong> (tokens routed, share of the token): {top}</p>"
            f"<p><strong>Most characteristic</strong> (lift): {characteristic}</p>"
            '<table class="mx-table"><thead><tr><th>Domain</th><th>Share of its tokens</th><th>Share of the probe</th>'
            f"<th>Expert (blue), probe (grey)</th></tr></thead><tbody>{domains}</tbody></table>"
            f'<ol class="mx-occurrences">{examples}</ol></article>')


def cards_markdown(experts: pd.DataFrame, importance: pd.DataFrame | None = None) -> str:
    """Return every model's cards as Markdown: ``## model``, ``### Layer l``, then the cards.

    Parameters
    ----------
    experts : the ``site.per_model`` table of :func:`moe_lib.site.explorer.expert_table`.
    importance : optional per-expert measures, columns ``model``, ``layer``, ``expert`` and
        one column per measure (see the module's docstring).
    """
    measures = None if importance is None else importance.set_index(["model", "layer", "expert"])
    legend = ('<p class="mx-legend">In the examples, <span class="mx-token mx-mark-1">top-1</span> a token that goes to '
              'the expert as its top-1 expert; <span class="mx-token mx-mark-2">lower slot</span> among its other top-k '
              'experts; <span class="mx-token mx-centre">outlined</span> the token the example is about.</p>')
    parts = [f"```{{=html}}\n<style>{asset('explorer.css')}</style>\n```\n"]
    for model in pd.unique(experts["model"]):
        own = experts[experts["model"] == model]
        n_experts = int(own["expert"].max()) + 1
        parts.append(f"## {model} {{#{model}}}\n")
        for layer, part in own.groupby("layer", sort=True):
            cards = "".join(card_html(str(model), row, n_experts,
                                      None if measures is None or (model, layer, row.expert) not in measures.index
                                      else measures.loc[(model, layer, row.expert)])
                            for row in part.sort_values("expert").itertuples())
            parts.append(f"### Layer {layer} {{#{model}-L{layer}}}\n\n```{{=html}}\n"
                         f'<div class="moe-explorer mx-cards">{legend}{cards}</div>\n```\n')
    return "\n".join(parts)
