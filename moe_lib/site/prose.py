"""Numbers quoted in a chapter's prose, written as a reader says them.

A chapter's inline code (`` `{python} say.per_model(top1)` ``) calls these helpers so the
page reads "0.15 in both models", not "0.15 to 0.15"; "no model reaches", not "0 of 2
models reach"; and a token with a leading space shows that space. Each helper returns a
:class:`Phrase`: a ``str`` that Jupyter displays as Markdown with no quotes around it, so
Quarto puts the words into the sentence as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

MINUS = "\u2212"  # a typographic minus: "−0.12" lines up with "+0.12"
SPACE_MARK = "\u2423"  # ␣, the open box: a visible leading or trailing space in a token
NUMBER_WORDS = {2: "both", 3: "all three", 4: "all four"}


class Phrase(str):
    """Words for the prose: shown as Markdown by Jupyter and Quarto, never as a quoted repr."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        return str(self)

    def capitalize(self) -> Phrase:
        """Return the phrase with its first letter upper-case (the rest kept: model names)."""
        return Phrase(self[:1].upper() + self[1:])


def number(value: float, decimals: int = 2, sign: bool = False) -> Phrase:
    """Return ``value`` rounded to ``decimals``, with thousands separators and a real minus.

    A value that rounds to zero is "0.00", never "-0.00"; ``sign`` writes "+" before
    positive values (differences). NaN and None give "" (an empty cell, not "nan").
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return Phrase("")
    rounded = round(float(value), decimals)
    if rounded == 0:
        rounded = 0.0  # drops the sign of -0.0
    text = f"{abs(rounded):,.{decimals}f}"
    if rounded < 0:
        return Phrase(MINUS + text)
    return Phrase(("+" if sign and rounded > 0 else "") + text)


def interval(value: float, low: float, high: float, decimals: int = 2, sign: bool = False) -> Phrase:
    """Return a value with its interval, e.g. "+1.39 [1.36, 1.43]" (the bounds carry the
    sign only where they are negative); a value without bounds is written alone."""
    if pd.isna(value):
        return Phrase("")
    if pd.isna(low) and pd.isna(high):
        return number(value, decimals, sign=sign)
    bounds = ", ".join(number(b, decimals) for b in (low, high))
    return Phrase(f"{number(value, decimals, sign=sign)} [{bounds}]")


def _with_unit(text: str, unit: str) -> str:
    return f"{text} {unit}" if unit else text


def span(values, decimals: int = 2, unit: str = "", sign: bool = False) -> Phrase:
    """Return the range of ``values`` as words: "0.15" when they round alike, else
    "0.12 to 0.15"; ``unit`` follows ("0.12 to 0.15 nats"); ``sign`` marks gains "+0.12"."""
    finite = [float(v) for v in _flat(values) if not pd.isna(v)]
    if not finite:
        raise ValueError("span of no values: the table the prose quotes is empty")
    low, high = number(min(finite), decimals, sign), number(max(finite), decimals, sign)
    text = low if low == high else f"{low} to {high}"
    return Phrase(_with_unit(text, unit))


def _flat(values) -> list:
    if isinstance(values, (pd.Series, pd.Index)):
        return values.tolist()
    if isinstance(values, Iterable) and not isinstance(values, str):
        return list(values)
    return [values]


def _models_in_order(values: pd.Series) -> list:
    index = values.index
    if isinstance(index, pd.CategoricalIndex):
        return [m for m in index.categories if m in set(index)]
    return list(dict.fromkeys(index))


def all_of(n: int, noun_plural: str) -> str:
    """Return "both models", "all three models" or "all 12 models" for ``n`` of ``n``."""
    return f"{NUMBER_WORDS.get(n, f'all {n}')} {noun_plural}"


def per_model(values: pd.Series, decimals: int = 2, unit: str = "", sign: bool = False) -> Phrase:
    """Return each model's value (or range) in words, from a Series indexed by model name.

    Rows of one model (several layers, say) are summarised by :func:`span`. Where the
    models agree at the shown precision: "0.15 in both models"; where they differ, each
    model is named: "0.81 in standard-default and 0.74 in cross-layer-default". One model:
    "0.15 in standard-default".
    """
    if not isinstance(values, pd.Series):
        raise TypeError("per_model takes a Series indexed by model name (e.g. table.set_index('model')[column])")
    models = _models_in_order(values)
    if not models:
        raise ValueError("per_model of no values: the table the prose quotes is empty")
    spans = {m: span(values[values.index == m], decimals, unit, sign) for m in models}
    if len(models) > 1 and len(set(spans.values())) == 1:
        return Phrase(f"{spans[models[0]]} in {all_of(len(models), 'models')}")
    return Phrase(join([f"{text} in {model}" for model, text in spans.items()]))


def join(parts: list[str], word: str = "and") -> str:
    """Return "a", "a and b" or "a, b and c"."""
    parts = [str(p) for p in parts]
    if len(parts) <= 2:
        return f" {word} ".join(parts)
    return f"{', '.join(parts[:-1])} {word} {parts[-1]}"


def count(n: int, noun: str, plural: str | None = None) -> Phrase:
    """Return a count with its noun: "no dead expert", "1 dead expert", "3 dead experts"."""
    n = int(n)
    plural = plural or noun + "s"
    if n == 0:
        return Phrase(f"no {noun}")
    return Phrase(f"{n:,} {noun if n == 1 else plural}")


def how_many(n: int, total: int, noun: str, plural: str | None = None,
             verb: tuple[str, str] | None = None) -> Phrase:
    """Return how many of ``total`` things do something, with the verb agreeing.

    ``how_many(0, 2, "model", verb=("reaches", "reach"))`` is "no model reaches";
    1 of 2 is "one of the 2 models reaches"; 2 of 2 is "both models reach"; 3 of 5 is
    "3 of the 5 models reach".
    """
    n, total = int(n), int(total)
    if not 0 <= n <= total:
        raise ValueError(f"how_many: {n} of {total}")
    plural = plural or noun + "s"
    singular_verb, plural_verb = verb or ("", "")
    if n == 0:
        words, verb_form = f"no {noun}", singular_verb
    elif n == total and total > 1:
        words, verb_form = all_of(total, plural), plural_verb
    elif total == 1:
        words, verb_form = f"the {noun}", singular_verb
    elif n == 1:
        words, verb_form = f"one of the {total} {plural}", singular_verb
    else:
        words, verb_form = f"{n} of the {total} {plural}", plural_verb
    return Phrase(f"{words} {verb_form}".rstrip())


def percent(share: float, decimals: int = 0) -> Phrase:
    """Return a share (0-1) as a percentage: 0.234 gives "23 %"."""
    return Phrase(f"{number(100 * float(share), decimals)} %")


def token(text: str) -> Phrase:
    """Return a token for the prose, in curly quotes with its edge spaces made visible:
    " bank" gives “␣bank”, so the opening quote faces the right way and the space shows."""
    shown = str(text).replace("\n", "\\n").replace("\t", "\\t")
    stripped = shown.strip(" ")
    lead, trail = len(shown) - len(shown.lstrip(" ")), len(shown) - len(shown.rstrip(" "))
    body = SPACE_MARK * lead + stripped + SPACE_MARK * trail if stripped else SPACE_MARK * len(shown)
    return Phrase(f"\u201c{body}\u201d")


def tokens(texts: Iterable[str]) -> Phrase:
    """Return several tokens, each as :func:`token`, joined with "and"."""
    return Phrase(join([token(t) for t in texts]))
