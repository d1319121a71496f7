"""`python -m moe_lib vocab TOKENIZER --out FILE.csv`: export a tokenizer's vocabulary."""

from __future__ import annotations

import argparse

from moe_lib.data.vocab import load_tokenizer, vocab_table, write_vocab_csv


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "vocab",
        help="export a tokenizer's vocabulary as CSV (token_id, token, display)",
        description="Write one row per token id: the raw token and a readable form "
        "(byte-level markers turned into spaces and newlines, other control bytes escaped).",
    )
    parser.add_argument("tokenizer", help="a tokenizer.json, a directory holding one, or a model name/path")
    parser.add_argument("--out", required=True, help="CSV to write, e.g. datasets/tokenizer-vocab/default.csv")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}")
        return 2
    table = vocab_table(tokenizer)
    path = write_vocab_csv(table, args.out)
    print(f"wrote {len(table)} tokens to {path}")
    return 0
