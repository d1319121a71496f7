"""Each polysemantic sample inside its own document: the text the model reads before it.

A snippet traced alone gives the router a few words at most to read a meaning from; one
that opens with its target gives it nothing. In a causal model, what can set a meaning
apart is the text before the target, so every sample is also traced after its document's
real preceding text.

For each sample of ``datasets/contextual-tokens/``, the file ``in-document.jsonl`` of that
folder records (one JSON object per line, in the order of
:func:`moe_lib.data.contextual.load_contextual_tokens`):

- ``token``, ``meaning``, ``sample_index``, ``source``: which sample;
- ``preceding``: the document's text right before the sample, at least
  :data:`MIN_CONTEXT_TOKENS` tokens of it when the document has them (cut at a line start
  when that adds little, else after a space), all of it otherwise;
- ``document_start``: whether ``preceding`` reaches back to the document's first character;
- ``context_tokens``: how many tokens come before the target in ``preceding + sample``.

The traced text is ``preceding + sample`` (the sample exactly as the YAML holds it, so the
target and everything after it are what the isolated probe traces) and its target span is
the sample's, shifted by ``len(preceding)``. A sample that cannot be found on its recorded
line, or whose target the tokenizer would cut differently after the context, is left out
and counted in ``in-document.json``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tqdm import tqdm

from moe_lib.data.contextual import find_target_spans, load_contextual_tokens

FILE_NAME = "in-document.jsonl"
META_NAME = "in-document.json"
MIN_CONTEXT_TOKENS = 64
SOURCE = re.compile(r"^(?P<doc>.+):line (?P<line>\d+) \[(?P<split>\w+)\]$")


def parse_source(source: str) -> tuple[str, int, str]:
    """Return ``(document id, line number, split)`` of a sample's ``sample_sources`` entry."""
    found = SOURCE.match(source or "")
    if found is None:
        raise ValueError(f"sample source {source!r} is not '<doc id>:line <n> [<split>]'")
    return found["doc"], int(found["line"]), found["split"]


def line_start(text: str, line: int) -> int:
    """Return the character offset where 1-based ``line`` of ``text`` starts."""
    offset = 0
    for _ in range(line - 1):
        offset = text.index("\n", offset) + 1
    return offset


def locate_sample(text: str, sample: str, line: int) -> int | None:
    """Return where ``sample`` starts in document ``text``, on 1-based ``line``, or None.

    Sentence samples had their whitespace collapsed (a sentence may run over lines), so the
    sample's words are matched with any whitespace between them. A line sample keeps its
    indentation, which must be in the document just before the first word.
    """
    pattern = re.compile(r"\s+".join(re.escape(word) for word in sample.split()))
    found = pattern.search(text, line_start(text, line))
    if found is None or text.count("\n", 0, found.start()) + 1 != line:
        return None
    indent = sample[: len(sample) - len(sample.lstrip())]
    start = found.start() - len(indent)
    return start if text[start:found.start()] == indent else None


def preceding_context(before: str, tokenizer, min_tokens: int = MIN_CONTEXT_TOKENS) -> str:
    """Return the end of ``before`` holding at least ``min_tokens`` tokens, or all of it.

    The cut goes back to the start of the line it falls in when that line adds at most
    ``min_tokens`` more tokens, else to just after the nearest space before it, so the
    context never opens in the middle of a word.
    """
    encoding = tokenizer.encode(before, add_special_tokens=False)
    if len(encoding.ids) <= min_tokens:
        return before
    cut = encoding.offsets[len(encoding.ids) - min_tokens][0]
    at_line = before.rfind("\n", 0, cut) + 1
    line_tokens = sum(1 for start, _ in encoding.offsets if at_line <= start < cut)
    if line_tokens <= min_tokens:
        return before[at_line:]
    at_space = before.rfind(" ", 0, cut)
    return before[at_space + 1:] if at_space >= 0 else before


def placed_sample(document: str, sample: str, token: str, line: int, tokenizer, max_tokens: int,
                  min_tokens: int = MIN_CONTEXT_TOKENS) -> dict | None:
    """Return ``preceding``, ``document_start`` and ``context_tokens`` of one sample in its
    document, or None when it cannot be placed there with its target cut as the token.

    ``max_tokens``: the traced text is cut there, so the target must come before it.
    """
    start = locate_sample(document, sample, line)
    spans = find_target_spans(sample, token)
    if start is None or len(spans) != 1:
        return None
    preceding = preceding_context(document[:start], tokenizer, min_tokens)
    index = target_index(preceding, sample, spans[0], token, tokenizer)
    if index is None or index >= max_tokens:
        return None
    return {"preceding": preceding, "document_start": len(preceding) == start, "context_tokens": index}


def target_index(preceding: str, sample: str, span, token: str, tokenizer) -> int | None:
    """Return the index of the target's token in ``preceding + sample`` (no special tokens),
    or None unless exactly one token covers the target ``span`` of ``sample`` and it is
    ``token``: the text before must not change how the target is cut."""
    target_start, target_end = (offset + len(preceding) for offset in span)
    encoding = tokenizer.encode(preceding + sample, add_special_tokens=False)
    covering = [i for i, (s, e) in enumerate(encoding.offsets) if e > s and s < target_end and e > target_start]
    if len(covering) != 1 or [encoding.ids[covering[0]]] != tokenizer.encode(token, add_special_tokens=False).ids:
        return None
    return covering[0]


def other_document_contexts(prefaces, samples, spans, tokens, genres, tokenizer, seed: int = 0) -> list[dict]:
    """Return, for each sample, text of other documents in place of its own preceding text:
    as many tokens as ``prefaces[i]`` holds, from the ends of other samples' prefaces, each
    from another corpus source (``genres``) and for another target token, so the target
    sits where it sat in its document but what it reads before it says nothing of its
    meaning or source.

    Donors are taken in a seeded random order from a seeded random start; where one is too
    short, the next one's text goes before it, until the tokens are there. The text is cut
    so that the target, still one token, has exactly the index it has after its own
    preface (the tokens at a join may merge, so the cut is searched near the count). Each
    result has ``preceding``, ``donor`` (the index of the sample whose preface ends it, -1
    for an empty preface) and ``context_tokens`` (the target's index, as in
    ``in-document.jsonl``).
    Raises ValueError naming a sample that no donors fit.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(prefaces))
    lengths = [len(tokenizer.encode(text, add_special_tokens=False).ids) for text in prefaces]
    own = [target_index(*sample, tokenizer) for sample in zip(prefaces, samples, spans, tokens)]
    out = []
    for i, need in enumerate(lengths):
        if need == 0:
            out.append({"preceding": "", "donor": -1, "context_tokens": own[i]})
            continue
        first, chain, found = int(rng.integers(len(order))), [], None
        for j in (int(order[(first + step) % len(order)]) for step in range(len(order))):
            if genres[j] == genres[i] or tokens[j] == tokens[i] or not lengths[j]:
                continue
            chain.append(j)
            if sum(lengths[k] for k in chain) < need:
                continue
            joined = "".join(prefaces[k] for k in reversed(chain))
            offsets = tokenizer.encode(joined, add_special_tokens=False).offsets
            for cut in sorted(range(max(len(offsets) - need - 3, 0), min(len(offsets) - need + 4, len(offsets))),
                              key=lambda c: abs(c - (len(offsets) - need))):
                text = joined[offsets[cut][0]:]  # the tokens at a join may merge: cut where the target lands
                if target_index(text, samples[i], spans[i], tokens[i], tokenizer) == own[i]:
                    found = {"preceding": text, "donor": chain[0], "context_tokens": own[i]}
                    break
            if found is not None:
                break
            chain = []
        if found is None:
            raise ValueError(f"sample {i} ({tokens[i]!r}, {need} tokens before it): no other documents' text fits")
        out.append(found)
    return out


def build_in_document(contextual_dir, documents, tokenizer, max_tokens: int,
                      min_tokens: int = MIN_CONTEXT_TOKENS) -> tuple[Path, dict]:
    """Write ``in-document.jsonl`` and ``in-document.json`` into ``contextual_dir``; return
    the first's path and the counts.

    ``documents`` yields ``(split, document)`` pairs (corpus and left-out documents, as
    :func:`moe_lib.data.contextual_build.corpus_documents` gives them); only those named by
    a sample are kept in memory. Both files are replaced atomically.
    """
    contextual_dir = Path(contextual_dir)
    samples = load_contextual_tokens(contextual_dir)
    wanted = {parse_source(source)[0] for source in samples.source}
    texts = {doc["id"]: doc["text"] for _, doc in documents if doc["id"] in wanted}
    records, missing = [], {"document not found": 0, "not on its line or target cut otherwise": 0}
    for row in tqdm(samples.itertuples(), total=len(samples), desc="samples in their documents"):
        doc_id, line, _ = parse_source(row.source)
        if doc_id not in texts:
            missing["document not found"] += 1
            continue
        placed = placed_sample(texts[doc_id], row.text, row.token, line, tokenizer, max_tokens, min_tokens)
        if placed is None:
            missing["not on its line or target cut otherwise"] += 1
            continue
        records.append({"token": row.token, "meaning": row.meaning, "sample_index": int(row.sample_index),
                        "source": row.source, **placed})
    meta = {"n_samples": len(samples), "n_placed": len(records), "left_out": missing,
            "min_context_tokens": min_tokens, "max_tokens": max_tokens,
            "n_full_context": sum(r["context_tokens"] >= min_tokens for r in records),
            "by": "python -m moe_lib datasets build-in-document"}
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    path = contextual_dir / FILE_NAME
    for target, content in ((path, lines), (contextual_dir / META_NAME, json.dumps(meta, indent=2) + "\n")):
        tmp = target.with_name(target.name + ".partial")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, target)
    return path, meta


def read_in_document(contextual_dir) -> list[dict]:
    """Return the records of ``in-document.jsonl``, each field checked.

    Raises FileNotFoundError naming the command that writes the file, and ValueError
    naming the file, line and field of a malformed record.
    """
    path = Path(contextual_dir) / FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; `python -m moe_lib datasets build-in-document` writes it")
    fields = {"token": str, "meaning": str, "sample_index": int, "source": str, "preceding": str,
              "document_start": bool, "context_tokens": int}
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            record = json.loads(line)
            for field, kind in fields.items():
                if not isinstance(record.get(field), kind):
                    raise ValueError(f"{path}, line {number}: field {field!r} must be {kind.__name__}, "
                                     f"got {record.get(field)!r}")
            records.append(record)
    return records
