"""Build datasets/contextual-tokens/ from the corpus documents, by written rules.

Re-running ``python -m moe_lib datasets build-contextual`` on the same corpus, tokenizer
and seed rewrites the same files. The labelling rule (also in the directory's README):

1. Every corpus document is cut into *snippets* of two kinds, each remembering its
   document id, line number and split:

   - ``line``: one line of a code or technical document, trailing spaces removed
     (indentation kept: the tokenizer sees it, and " *" in a C comment needs it);
   - ``sentence``: one sentence of a prose paragraph, whitespace collapsed. Technical
     documents contribute only paragraphs whose lines are not indented (indented lines in
     reStructuredText are literal code blocks).

2. A meaning is a rule in :data:`RULES`: a snippet kind, the corpus domains it may come
   from, a regular expression the snippet must match and one it must not. A snippet is a
   candidate for the meaning when it satisfies the rule, contains the token exactly once
   (by :func:`moe_lib.data.contextual.find_target_spans`), is 20 to 300 characters long,
   and the tokenizer cuts that occurrence as the token itself (so ``is_target`` marks
   exactly one token).

3. Candidates are de-duplicated (whitespace-insensitively, across meanings too), shuffled
   with a generator seeded by ``seed`` and the token and meaning names, and taken from the
   validation split first, then from train; each sample's source says which.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from moe_lib.data.contextual import find_target_spans, write_token_file
from moe_lib.data.contextual_rules import PROSE_DOMAINS, RULES, Rule

MIN_CHARS, MAX_CHARS = 20, 300
# Samples come from text the models never trained on first: the validation split, then
# documents the corpus left out past its byte caps; train only where those lack enough.
SPLIT_ORDER = ("validation", "unused", "train")
# A sentence ends at . ! or ? (maybe followed by a closing quote or bracket), before a
# space and a capital letter or an opening quote.
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(]?[A-Z])")


@dataclass(frozen=True)
class Snippet:
    """One candidate context: a line of code or a sentence of prose, with its origin."""

    kind: str  # "line" or "sentence"
    text: str
    domain: str
    source: str  # "<doc id>:line <n> [<split>]"
    split: str
    previous: str = ""  # the line before, for line snippets (what a C comment opened with)


def _line_snippets(doc: dict, split: str) -> list[Snippet]:
    snippets = []
    lines = [line.rstrip() for line in doc["text"].split("\n")]
    for number, line in enumerate(lines, start=1):
        # A short line ("@property", "{", "else:") is too little context alone: it is
        # taken together with the next line.
        if 0 < len(line.strip()) < MIN_CHARS and number < len(lines) and lines[number].strip():
            line = line + "\n" + lines[number]
        if MIN_CHARS <= len(line.strip()) and len(line) <= MAX_CHARS:
            previous = lines[number - 2] if number > 1 else ""
            source = f"{doc['id']}:line {number} [{split}]"
            snippets.append(Snippet("line", line, doc["domain"], source, split, previous))
    return snippets


def _paragraphs(text: str, indented_ok: bool):
    """Yield (first line number, paragraph text with newlines) of the prose paragraphs."""
    block, start = [], None
    for number, line in enumerate(text.split("\n") + [""], start=1):
        is_prose = line.strip() and (indented_ok or not line[0].isspace())
        if is_prose:
            if not block:
                start = number
            block.append(line.strip())
        elif block:
            yield start, "\n".join(block)
            block = []


def _sentence_snippets(doc: dict, split: str) -> list[Snippet]:
    snippets = []
    indented_ok = doc["domain"] in PROSE_DOMAINS
    for first_line, paragraph in _paragraphs(doc["text"], indented_ok):
        offset = 0
        for sentence in SENTENCE_END.split(paragraph):
            at = paragraph.find(sentence, offset)
            offset = at + len(sentence)
            text = " ".join(sentence.split())
            if MIN_CHARS <= len(text) <= MAX_CHARS:
                line = first_line + paragraph.count("\n", 0, at)
                snippets.append(Snippet("sentence", text, doc["domain"], f"{doc['id']}:line {line} [{split}]", split))
    return snippets


def corpus_documents(corpus_dir: str | os.PathLike, splits=("validation", "train")):
    """Yield ``(split, document)`` for every document of the built corpus."""
    for split in splits:
        path = Path(corpus_dir) / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"corpus file {path} is missing; build the corpus first")
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield split, json.loads(line)


def unused_documents(corpus_dir: str | os.PathLike, sources_dir: str | os.PathLike):
    """Yield ``("unused", document)`` for the English and code documents the corpus left out.

    The corpus caps each source's bytes; the documents past the cap are cut exactly as the
    corpus cuts them (same ids), and were never seen in training, like the validation split.
    """
    from moe_lib.data import corpus

    manifest = json.loads((Path(corpus_dir) / "manifest.json").read_text())
    files = {source["name"]: Path(sources_dir) / source["filename"] for source in manifest["sources"]}
    used = {document["id"] for _, document in corpus_documents(corpus_dir)}
    for component in corpus.COMPONENTS:
        if component.language not in ("en", "python"):
            continue
        path = files.get(component.source)
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"raw source {path} is missing; run `python -m moe_lib corpus` to fetch it")
        for document in corpus.component_documents(component, path, set(), set()):
            if document["id"] not in used:
                yield "unused", document


def read_snippets(documents) -> list[Snippet]:
    """Return every line and sentence snippet of the English and code documents given.

    ``documents`` yields ``(split, document)`` pairs as :func:`corpus_documents` does.
    """
    snippets = []
    for split, doc in tqdm(documents, desc="snippets", unit="doc"):
        if doc["language"] not in ("en", "python"):
            continue
        if doc["domain"] in ("code", "technical"):
            snippets += _line_snippets(doc, split)
        if doc["domain"] != "code":
            snippets += _sentence_snippets(doc, split)
    return snippets


def _cut_as_token(tokenizer: Tokenizer, token_id: int, text: str, span: tuple[int, int]) -> bool:
    """Return True when exactly one token overlaps ``span`` and it is ``token_id``."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    start, end = span
    covering = [i for (s, e), i in zip(encoding.offsets, encoding.ids) if e > s and s < end and e > start]
    return covering == [token_id]


def _seed_for(seed: int, *names: str) -> int:
    digest = hashlib.sha256("\0".join([str(seed), *names]).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def build_token(
    token: str, rules: list[Rule], snippets: list[Snippet], tokenizer: Tokenizer, seed: int, n_samples: int
) -> dict:
    """Return the YAML item of one token: up to ``n_samples`` labelled samples per meaning."""
    ids = tokenizer.encode(token, add_special_tokens=False).ids
    if len(ids) != 1:
        raise ValueError(f"token {token!r} is not a single token for this tokenizer: {ids}")
    with_token = [s for s in snippets if token in s.text]
    taken: set[str] = set()
    meanings = []
    for rule in rules:
        candidates = [s for s in with_token if rule.accepts(s) and len(find_target_spans(s.text, token)) == 1]
        rng = np.random.default_rng(_seed_for(seed, token, rule.label))
        ordered = []
        for split in SPLIT_ORDER:
            in_split = [s for s in candidates if s.split == split]
            ordered += [in_split[i] for i in rng.permutation(len(in_split))]
        chosen = []
        for snippet in ordered:
            key = " ".join(snippet.text.split())
            if key in taken:
                continue
            span = find_target_spans(snippet.text, token)[0]
            if _cut_as_token(tokenizer, ids[0], snippet.text, span):
                taken.add(key)
                chosen.append(snippet)
            if len(chosen) == n_samples:
                break
        meanings.append(
            {
                "meaning_label": rule.label,
                "description": rule.description,
                "text_samples": [s.text for s in chosen],
                "sample_sources": [s.source for s in chosen],
            }
        )
    return {"token": token, "meanings": meanings}


def file_name(token: str) -> str:
    """Return the YAML file name for a token: its visible text, symbols spelt out."""
    names = {":": "colon", "#": "hash", "$": "dollar", "{": "brace", "=": "equals", "*": "star", "@": "at",
             "~": "tilde", "-": "hyphen", ".": "period", ",": "comma", "%": "percent", "|": "pipe", "/": "slash"}
    visible = token.strip()
    base = names.get(visible, visible) if not visible.isalnum() else visible
    prefix = "space-" if token.startswith(" ") and not visible.isalnum() else ""
    return f"{prefix}{base}.yaml"


def build_all(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: Tokenizer,
    seed: int = 0,
    n_samples: int = 60,
    sources_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write one YAML file per token of :data:`RULES` into ``out_dir``; return their paths.

    With ``sources_dir``, documents that the corpus left out are candidates too.
    """
    from itertools import chain

    documents = corpus_documents(corpus_dir)
    if sources_dir is not None:
        documents = chain(documents, unused_documents(corpus_dir, sources_dir))
    snippets = read_snippets(documents)
    paths = []
    for token, rules in tqdm(RULES.items(), desc="tokens"):
        item = build_token(token, rules, snippets, tokenizer, seed, n_samples)
        paths.append(write_token_file(item, Path(out_dir) / file_name(token)))
    # The directory holds exactly the tokens of RULES: a token dropped from the rules
    # loses its file rather than lingering with stale samples.
    for stale in set(Path(out_dir).glob("*.yaml")) - set(paths):
        stale.unlink()
    return paths
