"""`python -m moe_lib tokenizer`: train the byte-level BPE on the corpus's train split."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from moe_lib.commands.inputs import require_corpus
from moe_lib.data.baselines import ngram_baselines
from moe_lib.data.corpus import read_documents
from moe_lib.data.tokenizer import DEFAULT_VOCAB_SIZE, save_tokenizer, train_bpe

STATS_FILE = "corpus_stats.json"


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="train the byte-level BPE tokenizer on datasets/corpus/train.jsonl",
        description=(
            "Train a byte-level BPE (tokenizers library) on the train split, save it as "
            "tokenizer.json + tokenizer_config.json (loadable with AutoTokenizer), then count "
            f"tokens per split and domain and score n-gram baselines into {STATS_FILE}."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--corpus", type=Path, default=Path("datasets/corpus"),
                        help="folder with train.jsonl and validation.jsonl")
    parser.add_argument("--out", type=Path, default=Path("datasets/tokenizer"),
                        help="output folder (written atomically)")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                        help="entries in the vocabulary, special tokens included")
    parser.add_argument("--no-stats", action="store_true",
                        help="skip token counts and n-gram baselines")
    parser.set_defaults(func=run)


def corpus_stats(tokenizer, splits: dict[str, list[dict]]) -> dict:
    """Return token counts per split and domain, and the n-gram baselines table."""
    ids = {}
    counts = []
    for split, docs in splits.items():
        encodings = tokenizer.backend_tokenizer.encode_batch(
            [d["text"] for d in docs], add_special_tokens=False)
        ids[split] = [np.asarray(e.ids, dtype=np.int32) for e in encodings]
        for domain in sorted({d["domain"] for d in docs}):
            chosen = [i for i, d in enumerate(docs) if d["domain"] == domain]
            counts.append({
                "split": split, "domain": domain, "n_documents": len(chosen),
                "n_bytes": sum(len(docs[i]["text"].encode()) for i in chosen),
                "n_tokens": int(sum(len(ids[split][i]) for i in chosen)),
            })
    baselines = ngram_baselines(ids["train"], ids["validation"],
                                [d["domain"] for d in splits["validation"]],
                                vocab_size=len(tokenizer))
    return {"token_counts": counts, "ngram_baselines": baselines.to_dict("records"),
            "ngram_parameters": {k: (v if isinstance(v, int) else float(v))
                                 for k, v in baselines.attrs.items()}}


def run(args: argparse.Namespace) -> int:
    require_corpus(args.corpus)
    splits = {split: read_documents(args.corpus / f"{split}.jsonl")
              for split in ("train", "validation")}
    start = time.perf_counter()
    texts = [d["text"] for d in splits["train"]]
    tokenizer = train_bpe(texts, vocab_size=args.vocab_size, length=len(texts))
    print(f"trained {len(tokenizer)} entries in {time.perf_counter() - start:.1f} s")
    save_tokenizer(tokenizer, args.out)
    if args.no_stats:
        return 0
    stats = {"vocab_size": len(tokenizer),
             "corpus_manifest_files": json.loads(
                 (args.corpus / "manifest.json").read_text())["files"],
             **corpus_stats(tokenizer, splits)}
    partial = args.out / (STATS_FILE + ".partial")
    partial.write_text(json.dumps(stats, indent=1) + "\n")
    os.replace(partial, args.out / STATS_FILE)
    for row in stats["token_counts"]:
        print(f"{row['split']:<10} {row['domain']:<10} {row['n_documents']:>6} docs "
              f"{row['n_bytes'] / 1e6:7.2f} MB {row['n_tokens'] / 1e6:7.3f} M tokens "
              f"{row['n_bytes'] / row['n_tokens']:5.2f} bytes/token")
    for row in stats["ngram_baselines"]:
        print(f"{row['model']:<28} {row['domain']:<10} {row['nats_per_token']:.3f} nats/token "
              f"({row['n_tokens']} tokens)")
    return 0
