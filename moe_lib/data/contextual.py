"""Polysemantic tokens in context: read the YAML sets and locate every target occurrence.

The established format is one YAML file per token holding a one-element list::

    - token: " bank"
      meanings:
        - meaning_label: finance
          text_samples: ["The bank raised its rates.", ...]

Our files add, per meaning, a ``description`` and a ``sample_sources`` list parallel to
``text_samples`` (where each sample came from); files without them load too.

Where the token occurs in a text (the rule the whole project uses, see
datasets/contextual-tokens/README.md): an occurrence of token ``t`` is a place where the
text reads exactly ``t`` (case-sensitive), such that

- if ``t`` starts with a space, the span starts at that space, because the tokenizer folds
  the space into the token (" bank" is one token); a text that starts with "bank" has no
  occurrence of " bank";
- if ``t``'s first visible character is a word character (letter, digit, underscore) and
  ``t`` has no leading space, the character before is not a word character;
- if ``t``'s last character is a word character, the character after is not one
  (" bank" does not occur in " banks" or " bank_id");
- symbols have no boundary condition: both colons of "a::b" are occurrences of ":".

Spans are ``(start, end)`` character offsets into the Python string, end exclusive.
Whether the tokenizer really cuts the text there is checked by the validator, not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

DEFAULT_DIR = Path("datasets/contextual-tokens")
SAMPLE_COLUMNS = ["token", "meaning", "sample_index", "text", "source", "target_spans", "file"]


class ContextualFormatError(ValueError):
    """A contextual-token file that does not follow the format."""


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def find_target_spans(text: str, token: str) -> list[tuple[int, int]]:
    """Return the character spans of every occurrence of ``token`` in ``text``.

    Parameters
    ----------
    text
        The sample.
    token
        The token string, with its leading space where it has one (" bank", ":").

    Returns
    -------
    list of (int, int)
        ``(start, end)`` offsets, end exclusive, in order; a leading-space token's span
        includes the space. Occurrences may be adjacent but never overlap.
    """
    if not token:
        raise ValueError("token must be a non-empty string")
    visible = token.lstrip(" ")
    if not visible:
        raise ValueError(f"token {token!r} is only spaces")
    check_left = not token.startswith(" ") and _is_word_char(visible[0])
    check_right = _is_word_char(visible[-1])
    spans = []
    start = text.find(token)
    while start != -1:
        end = start + len(token)
        left_ok = not check_left or start == 0 or not _is_word_char(text[start - 1])
        right_ok = not check_right or end == len(text) or not _is_word_char(text[end])
        if left_ok and right_ok:
            spans.append((start, end))
            start = text.find(token, end)
        else:
            start = text.find(token, start + 1)
    return spans


def target_token_mask(offsets_mapping, spans) -> np.ndarray:
    """Return, per token position, whether the token overlaps a target span.

    Parameters
    ----------
    offsets_mapping
        ``(n_tokens, 2)`` character offsets as a tokenizer's offset mapping gives them
        (``return_offsets_mapping=True``, or ``Encoding.offsets``). Special tokens with an
        empty ``(0, 0)`` range are never targets.
    spans
        Target spans from :func:`find_target_spans`.

    Returns
    -------
    numpy.ndarray
        ``bool`` of shape ``(n_tokens,)``.

    Notes
    -----
    Overlap rather than equality, because byte-level tokenizers may trim the leading space
    from a token's offsets (" bank" reported as the range of "bank").
    """
    offsets = np.asarray(offsets_mapping, dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(offsets), dtype=bool)
    starts, ends = offsets[:, 0], offsets[:, 1]
    non_empty = ends > starts
    for span_start, span_end in spans:
        mask |= non_empty & (starts < span_end) & (ends > span_start)
    return mask


def read_token_file(path: str | os.PathLike) -> dict:
    """Return the one item of a contextual-token YAML file, its shape checked.

    Raises :class:`ContextualFormatError` naming the file and field when the shape is
    wrong (not a one-element list, no ``token``, a meaning without ``text_samples``,
    ``sample_sources`` not parallel to ``text_samples``, ...).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise ContextualFormatError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        raise ContextualFormatError(f"{path}: expected a one-element list holding a mapping, got {type(data).__name__}")
    item = data[0]
    token = item.get("token")
    if not isinstance(token, str) or not token:
        raise ContextualFormatError(f"{path}: field 'token' must be a non-empty string, got {token!r}")
    meanings = item.get("meanings")
    if not isinstance(meanings, list) or not meanings:
        raise ContextualFormatError(f"{path}: token {token!r}: field 'meanings' must be a non-empty list")
    for index, meaning in enumerate(meanings):
        where = f"{path}: token {token!r}: meanings[{index}]"
        if not isinstance(meaning, dict):
            raise ContextualFormatError(f"{where}: must be a mapping, got {type(meaning).__name__}")
        label = meaning.get("meaning_label")
        if not isinstance(label, str) or not label:
            raise ContextualFormatError(f"{where}: field 'meaning_label' must be a non-empty string, got {label!r}")
        samples = meaning.get("text_samples")
        if not isinstance(samples, list):
            raise ContextualFormatError(f"{where} ({label}): field 'text_samples' must be a list")
        for sample_index, sample in enumerate(samples):
            if not isinstance(sample, str):
                raise ContextualFormatError(
                    f"{where} ({label}): text_samples[{sample_index}] must be a string, got {sample!r}"
                )
        sources = meaning.get("sample_sources")
        if sources is not None and (not isinstance(sources, list) or len(sources) != len(samples)):
            n_sources = len(sources) if isinstance(sources, list) else type(sources).__name__
            raise ContextualFormatError(
                f"{where} ({label}): 'sample_sources' must parallel 'text_samples' "
                f"({len(samples)} samples, {n_sources} sources)"
            )
    return item


def token_files(directory: str | os.PathLike = DEFAULT_DIR) -> list[Path]:
    """Return the YAML files of a contextual-token directory, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"contextual-token directory {directory} does not exist")
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


def load_contextual_tokens(directory: str | os.PathLike = DEFAULT_DIR) -> pd.DataFrame:
    """Return every sample of a contextual-token directory with its target spans.

    Parameters
    ----------
    directory
        A folder of YAML files in the format above.

    Returns
    -------
    pandas.DataFrame
        One row per sample: ``token``, ``meaning`` (the meaning_label), ``sample_index``
        (position in its meaning's ``text_samples``), ``text``, ``source`` (None where the
        file has no ``sample_sources``), ``target_spans`` (list of ``(start, end)``), and
        ``file`` (the file's name).
    """
    rows = []
    for path in token_files(directory):
        item = read_token_file(path)
        token = item["token"]
        for meaning in item["meanings"]:
            samples = meaning["text_samples"]
            sources = meaning.get("sample_sources") or [None] * len(samples)
            for sample_index, (text, source) in enumerate(zip(samples, sources)):
                spans = find_target_spans(text, token)
                rows.append((token, meaning["meaning_label"], sample_index, text, source, spans, path.name))
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def write_token_file(item: dict, path: str | os.PathLike) -> Path:
    """Write one token's item as a one-element YAML list, atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as handle:
        # width=inf keeps each sample on one line, so diffs show whole samples.
        yaml.safe_dump([item], handle, allow_unicode=True, sort_keys=False, width=float("inf"))
    os.replace(tmp, path)
    return path
