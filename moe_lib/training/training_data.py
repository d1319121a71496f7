"""Text into tensors for training: token streams, fixed validation blocks, the probe set.

The corpus is ``datasets/corpus/{train,validation}.jsonl`` (see ``moe_lib.data.corpus``),
one document per line with ``id``, ``domain``, ``source``, ``language`` and ``text``.
Everything here is deterministic: the same files and tokenizer give the same arrays.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from moe_lib.data.corpus import read_documents
from moe_lib.data.sources import sha256_file

__all__ = ["read_documents", "corpus_fingerprint", "tokenize_documents", "eval_blocks", "probe_set"]


def corpus_fingerprint(path: Path, tokenizer) -> str:
    """Return a sha256 of the corpus file's bytes and the tokenizer's vocabulary and merges."""
    digest = hashlib.sha256(sha256_file(path).encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    return digest.hexdigest()[:16]


def _encode(texts: list[str], tokenizer, desc: str, progress: bool) -> list[list[int]]:
    ids = []
    for start in tqdm(range(0, len(texts), 256), desc=desc, disable=not progress, unit="batch"):
        ids.extend(tokenizer(texts[start : start + 256], add_special_tokens=False)["input_ids"])
    return ids


def tokenize_documents(documents: list[dict], tokenizer, progress: bool = True) -> np.ndarray:
    """Return one token stream: every document in file order, each followed by EOS.

    The EOS between documents tells the model where one text stops, as in GPT-2 packing.
    Returned as int32 (``(token,)``), enough for any vocabulary.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path}: no eos_token_id to separate documents")
    ids = _encode([d["text"] for d in documents], tokenizer, "tokenizing", progress)
    return np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int32)


def eval_blocks(documents: list[dict], tokenizer, seq_len: int, tokens_per_domain: int) -> dict[str, np.ndarray]:
    """Return fixed validation blocks per domain: ``{domain: (block, seq_len) int32}``.

    Documents are taken in ``id`` order until ``tokens_per_domain`` tokens (rounded down to
    whole blocks; at least one block if the domain has that many tokens), so every
    checkpoint of every run is scored on exactly the same text.
    """
    by_domain: dict[str, list[dict]] = {}
    for doc in sorted(documents, key=lambda d: d["id"]):
        by_domain.setdefault(doc["domain"], []).append(doc)
    blocks = {}
    for domain, docs in sorted(by_domain.items()):
        stream, n = [], 0
        for doc in docs:
            ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            stream.extend(ids)
            n += len(ids)
            if n >= tokens_per_domain:
                break
        n_blocks = min(len(stream), tokens_per_domain) // seq_len
        if n_blocks == 0:
            continue  # a domain with less than one block of held-out text cannot be scored
        blocks[domain] = np.asarray(stream[: n_blocks * seq_len], dtype=np.int32).reshape(n_blocks, seq_len)
    if not blocks:
        raise ValueError(f"validation documents: no domain has {seq_len} tokens to score")
    return blocks


def probe_set(documents: list[dict], n_per_domain: int = 8, max_chars: int = 1500):
    """Return the routing probe: held-out texts of every domain, their labels and fingerprint.

    The first ``n_per_domain`` documents of each domain in ``id`` order, each cut to
    ``max_chars`` characters (a trace truncates to its own ``max_length`` tokens anyway).

    Returns
    -------
    (list[str], dict[str, list], str)
        Texts; per-text labels ``domain``, ``source``, ``language``, ``doc_id``; and a
        sha256 fingerprint of both (part of every probe trace's cache identity).
    """
    chosen = []
    by_domain: dict[str, int] = {}
    for doc in sorted(documents, key=lambda d: d["id"]):
        if by_domain.get(doc["domain"], 0) < n_per_domain:
            by_domain[doc["domain"]] = by_domain.get(doc["domain"], 0) + 1
            chosen.append(doc)
    chosen.sort(key=lambda d: (d["domain"], d["id"]))
    texts = [d["text"][:max_chars] for d in chosen]
    labels = {
        "domain": [d["domain"] for d in chosen],
        "source": [d["source"] for d in chosen],
        "language": [d["language"] for d in chosen],
        "doc_id": [d["id"] for d in chosen],
    }
    fingerprint = hashlib.sha256(json.dumps([texts, labels], sort_keys=True).encode()).hexdigest()[:16]
    return texts, labels, fingerprint
