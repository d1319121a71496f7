"""The site's probe sets, read from committed files so a fresh clone can key its traces.

``datasets/probe/domains.jsonl`` holds exactly the texts and labels that
``probe_traces.domain_probe`` draws from the corpus's validation split (one JSON record per
text), and ``domains.json`` its fingerprint and where it came from. Training fingerprints the
probe from the corpus; the site fingerprints it from this file; both must agree, or the
committed traces would never be found. ``python -m moe_lib build`` rewrites the file from
the corpus whenever the corpus exists, so the two cannot drift apart silently.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from moe_lib.models.registry import PROJECT_ROOT

PROBE_DIR = PROJECT_ROOT / "datasets" / "probe"
CONTEXTUAL_DIR = PROJECT_ROOT / "datasets" / "contextual-tokens"
LABELS = ("domain", "source", "language", "doc_id")


def probe_fingerprint(texts: list[str], labels: dict) -> str:
    """Return the fingerprint ``training_data.probe_set`` gives these texts and labels."""
    return hashlib.sha256(json.dumps([texts, labels], sort_keys=True).encode()).hexdigest()[:16]


def write_domain_probe(validation_path: Path, directory: Path = PROBE_DIR) -> str:
    """Write the domain probe drawn from a validation split to ``directory``; return its fingerprint.

    The texts and labels are those of ``probe_traces.domain_probe(validation_path)``; the
    files are replaced atomically, and left untouched when already identical.
    """
    from moe_lib.training.probe_traces import domain_probe as draw

    texts, labels, fp = draw(Path(validation_path))
    directory.mkdir(parents=True, exist_ok=True)
    records = "".join(
        json.dumps({"text": text, **{k: labels[k][i] for k in LABELS}}, ensure_ascii=False) + "\n"
        for i, text in enumerate(texts)
    )
    meta = {"fingerprint": fp, "n_texts": len(texts), "drawn_from": "datasets/corpus/validation.jsonl",
            "by": "moe_lib.training.probe_traces.domain_probe"}
    for name, content in (("domains.jsonl", records), ("domains.json", json.dumps(meta, indent=2) + "\n")):
        path = directory / name
        if path.exists() and path.read_text(encoding="utf-8") == content:
            continue
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    return fp


def domain_probe(directory: Path = PROBE_DIR):
    """Return ``(texts, labels, fingerprint)`` of the committed domain probe.

    Raises
    ------
    FileNotFoundError
        When ``domains.jsonl`` is missing (``python -m moe_lib build`` writes it).
    ValueError
        When the file's fingerprint differs from the one recorded in ``domains.json``.
    """
    path = directory / "domains.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no domain probe; `python -m moe_lib build` writes it from the corpus")
    texts, labels = [], {k: [] for k in LABELS}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            record = json.loads(line)
            missing = [k for k in ("text", *LABELS) if k not in record]
            if missing:
                raise ValueError(f"{path}, line {number}: record lacks field(s) {missing}")
            texts.append(record["text"])
            for k in LABELS:
                labels[k].append(record[k])
    fp = probe_fingerprint(texts, labels)
    meta_path = directory / "domains.json"
    if meta_path.is_file():
        recorded = json.loads(meta_path.read_text())["fingerprint"]
        if recorded != fp:
            raise ValueError(f"{path}: fingerprint {fp} differs from {recorded} recorded in {meta_path}")
    return texts, labels, fp


def contextual_probe(directory: Path = CONTEXTUAL_DIR):
    """Return ``(texts, labels, target_spans, fingerprint)`` of the polysemantic samples.

    Read once per process while the folder's files are unchanged: parsing the YAML takes
    seconds, and every chapter asks for the probe's identity once per model.
    """
    probe = _read_contextual(str(directory), _signature(directory))
    if probe is None:
        raise FileNotFoundError(f"{directory}: no polysemantic-token samples (datasets build-contextual writes them)")
    return probe


def in_document_probe(directory: Path = CONTEXTUAL_DIR):
    """Return ``(texts, labels, target_spans, fingerprint)`` of the polysemantic samples,
    each after its document's preceding text (``in-document.jsonl``); read once per process
    while the folder's files are unchanged."""
    probe = _read_contextual(str(directory), _signature(directory, in_document=True), in_document=True)
    if probe is None:
        raise FileNotFoundError(f"{directory}: no in-document.jsonl beside the polysemantic-token samples "
                                "(`python -m moe_lib datasets build-in-document` writes it)")
    return probe


def in_other_document_probe(directory: Path = CONTEXTUAL_DIR, seed: int = 0):
    """Return ``(texts, labels, target_spans, fingerprint)`` of the position control of the
    in-document probe: each sample after as many tokens of other documents' text (from other
    corpus sources) as its own document put before it (:func:`moe_lib.data.contextual_documents.other_document_contexts`,
    counted with the default models' tokenizer, seeded). The target sits where it sat in
    its document; the text before it says nothing of its meaning or source. Labels are the
    in-document probe's, with ``context_tokens`` counted again and ``donor_source`` (the
    corpus source the text before comes from)."""
    return _read_other_document(str(directory), _signature(directory, in_document=True), seed)


@functools.lru_cache(maxsize=2)
def _read_other_document(directory: str, signature: tuple, seed: int):
    from moe_lib.analysis.crosslayer import corpus_source
    from moe_lib.core.cache import fingerprint
    from moe_lib.data.contextual_documents import other_document_contexts, read_in_document
    from moe_lib.data.vocab import DEFAULT_TOKENIZER_DIR, load_tokenizer

    texts, labels, spans, _ = in_document_probe(Path(directory))
    prefaces = [record["preceding"] for record in read_in_document(directory)]
    samples = [text[len(preface):] for text, preface in zip(texts, prefaces)]
    in_sample = [[[a - len(preface), b - len(preface)] for a, b in span] for span, preface in zip(spans, prefaces)]
    genres = corpus_source(labels["source"])
    placed = other_document_contexts(prefaces, samples, [s[0] for s in in_sample], labels["target"], genres,
                                     load_tokenizer(DEFAULT_TOKENIZER_DIR), seed=seed)
    texts = [p["preceding"] + sample for p, sample in zip(placed, samples)]
    spans = [[[a + len(p["preceding"]), b + len(p["preceding"])] for a, b in span] for p, span in zip(placed, in_sample)]
    labels = {**labels, "context_tokens": [p["context_tokens"] for p in placed],
              "donor_source": [genres[p["donor"]] if p["donor"] >= 0 else "" for p in placed]}
    return texts, labels, spans, fingerprint(texts, {**labels, "spans": [str(s) for s in spans], "seed": seed})


def _signature(directory: Path, in_document: bool = False) -> tuple:
    """Name, size and time of the sample files (and ``in-document.jsonl``): a probe read
    once per process is read again when one of them changes."""
    files = sorted(Path(directory).glob("*.yaml")) if Path(directory).is_dir() else []
    if in_document:
        files.append(Path(directory) / "in-document.jsonl")
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


@functools.lru_cache(maxsize=4)
def _read_contextual(directory: str, signature: tuple, in_document: bool = False):
    from moe_lib.training.probe_traces import contextual_probe, in_document_probe

    return (in_document_probe if in_document else contextual_probe)(Path(directory))


def tiny_corpus(out_dir: Path, directory: Path = PROBE_DIR) -> Path:
    """Write a corpus folder (train and validation) made of the probe's documents; return it.

    For the tests' tiny models only: they need some real text to train on when the full
    corpus is not built. Both splits hold the same documents, so never judge a model by it.
    """
    texts, labels, _ = domain_probe(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps({"id": labels["doc_id"][i], "source": labels["source"][i], "location": labels["doc_id"][i],
                    "domain": labels["domain"][i], "language": labels["language"][i], "text": text},
                   ensure_ascii=False) + "\n"
        for i, text in enumerate(texts)
    )
    for name in ("train.jsonl", "validation.jsonl"):
        (out_dir / name).write_text(lines, encoding="utf-8")
    return out_dir
