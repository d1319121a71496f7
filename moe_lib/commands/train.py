"""`python -m moe_lib train RECIPE`: train (or resume) one of the project's own MoEs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the standard or cross-layer MoE on the corpus, with checkpoints",
        description="Train a recipe on datasets/corpus with datasets/tokenizer. Checkpoints "
        "(log-spaced, with validation loss per domain and expert load per layer) go to "
        "OUT/checkpoints/step-XXXXXX; an OUT that holds checkpoints resumes from the last one. "
        "After each checkpoint a routing trace of held-out text of every domain is cached in "
        "data-cache/ (and of the polysemantic-token samples after the last).",
    )
    parser.add_argument("recipe", choices=["standard", "cross-layer"], help="which recipe")
    parser.add_argument("--preset", choices=["tiny", "default", "long", "gpu", "default-weakbalance"], default="default",
                        help="model size and training length (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="run directory (default: datasets/saved-models/RECIPE-PRESET, -seedN added for seed N > 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order (default: 0)")
    parser.add_argument("--corpus", type=Path, default=Path("datasets/corpus"),
                        help="folder with train.jsonl and validation.jsonl (default: %(default)s)")
    parser.add_argument("--tokenizer", type=Path, default=Path("datasets/tokenizer"),
                        help="tokenizer folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda for the gpu preset (default: cpu)")
    parser.add_argument("--no-trace", action="store_true", help="skip the probe traces at checkpoints")
    parser.add_argument("--stop-after", type=int, metavar="STEP",
                        help="stop after the first checkpoint at or past STEP, as if killed (for resume checks)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from moe_lib.commands.inputs import require_corpus, require_tokenizer
    from moe_lib.training.train import train

    require_corpus(args.corpus)  # a fresh clone has no corpus: say which command builds it
    require_tokenizer(args.tokenizer)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_checkpoint = None
    if not args.no_trace:
        from moe_lib.training.probe_traces import PROBES, trace_checkpoint

        def on_checkpoint(path, model, tokenizer, final):
            # The polysemantic samples (alone and in their documents) are ~1M tokens: traced
            # on the final model only here; trace_checkpoint(path, probes=...) adds them for
            # any other checkpoint.
            probes = PROBES if final else ("domains",)
            trace_checkpoint(path, validation_path=args.corpus / "validation.jsonl", model=model,
                             tokenizer=tokenizer, probes=probes)

    run_dir = train(
        args.recipe, args.preset, out_dir=args.out, seed=args.seed, corpus_dir=args.corpus,
        tokenizer_dir=args.tokenizer, stop_after=args.stop_after, on_checkpoint=on_checkpoint,
        device=args.device,
    )
    print(f"run directory: {run_dir}")
    return 0
