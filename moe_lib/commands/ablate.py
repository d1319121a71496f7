"""`python -m moe_lib ablate MODEL --benchmark mmlu|heldout`: the ablation grid and the lens, cached.

Writes four kinds of cached tables (see :mod:`moe_lib.cache`), each keyed by the model's
identity, the benchmark, the grid and the sample's fingerprint:

- ``ablation-mmlu``: per question and condition, the letters' log-probabilities and
  whether the best one is right; ``ablation-heldout``: per text and condition, the summed
  next-token loss and the number of tokens predicted;
- ``lens-mmlu``: per question, layer and lens condition, the answer letter's rank and
  probability; ``lens-heldout``: per domain, layer and lens condition, the lens summary.

Read them back with :func:`moe_lib.analysis.ablation.cached_results`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ABLATION_VERSION = 1  # bump when what the grid computes changes: it is part of every key
CORPUS_VALIDATION = Path("datasets/corpus/validation.jsonl")


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="run the expert-ablation grid and the logit lens on MMLU or held-out text, into the cache",
        description="Remove experts by rank (top-1, slots 1+, all) in all, the first or the last MoE "
        "layers, with and without renormalising, each with a random control matched in number; score "
        "MMLU by the answer letters' log-probabilities (for models that answer at chance, use held-out "
        "text: next-token loss per corpus domain); add the logit lens; cache every table.",
    )
    parser.add_argument("model", help="registry name (see `info`), hub id org/name, or a local folder")
    parser.add_argument("--benchmark", choices=["mmlu", "heldout"], required=True)
    parser.add_argument("--grid", choices=["default", "full"], default="default", help="conditions (default: default)")
    parser.add_argument("--n-questions", type=int, default=1000, help="MMLU questions, a seeded sample (default 1000)")
    parser.add_argument("--n-shots", type=int, default=5, help="solved dev questions before each question (default 5)")
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="MMLU split (default test)")
    parser.add_argument("--mmlu-source", default="olmo", choices=["olmo", "hub", "csv"], help="see moe_lib.data.mmlu")
    parser.add_argument("--mmlu-root", type=Path, help="folder of the MMLU files (default for the source)")
    parser.add_argument("--corpus", type=Path, default=CORPUS_VALIDATION, help="held-out .jsonl (id, domain, text)")
    parser.add_argument("--n-docs", type=int, default=60, help="held-out texts per domain, seeded (default 60)")
    parser.add_argument("--max-length", type=int, help="tokens per text (held-out default 256; MMLU default "
                        "the model's max positions, keeping each prompt's end)")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="sample, random controls and bootstrap (default 0)")
    parser.add_argument("--no-lens", action="store_true", help="skip the logit lens")
    parser.add_argument("--revision", help="hub branch, tag or commit, or a training run's checkpoint (step-000480)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    parser.set_defaults(func=run)


def mmlu_items(args) -> tuple[list[str], dict]:
    """Return the prompts and their labels (answer, subject, domain) of a seeded MMLU sample."""
    from moe_lib.data.mmlu import format_prompt, load_mmlu, sample_questions

    table = load_mmlu(args.split, source=args.mmlu_source, root=args.mmlu_root)
    dev = load_mmlu("dev", source=args.mmlu_source, root=args.mmlu_root)
    n_questions = min(args.n_questions, len(table))
    questions = sample_questions(table, n_questions, args.seed).merge(table, on=["subject", "row"])
    prompts = [format_prompt(row, dev, args.n_shots) for _, row in questions.iterrows()]
    labels = {name: questions[name].tolist() for name in ("answer", "subject", "domain", "row")}
    return prompts, labels


def heldout_items(args) -> tuple[list[str], dict]:
    """Return up to ``--n-docs`` held-out texts per domain (seeded) and their labels."""
    import numpy as np

    from moe_lib.data.corpus import read_documents

    if not args.corpus.is_file():
        raise FileNotFoundError(f"{args.corpus}: no held-out corpus; build it with `python -m moe_lib corpus`")
    documents = read_documents(args.corpus)
    rng = np.random.default_rng(args.seed)
    picked = []
    for domain in sorted({d["domain"] for d in documents}):
        in_domain = [d for d in documents if d["domain"] == domain]
        chosen = rng.choice(len(in_domain), size=min(args.n_docs, len(in_domain)), replace=False)
        picked += [in_domain[i] for i in sorted(chosen)]
    labels = {name: [d[name] for d in picked] for name in ("id", "domain", "language")}
    return [d["text"] for d in picked], labels


def lens_conditions():
    """Return the lens's conditions: baseline, top-1 removed in all layers, its random control."""
    from moe_lib.analysis.ablation import Condition

    return [Condition(), Condition("all", "0"), Condition("all", "0", random_control=True)]


def _grid_table(args, model, tokenizer, texts, labels):
    import pandas as pd

    from moe_lib.analysis import ablation
    from moe_lib.capture import find_moe_layers
    from moe_lib.models.families import family_of, top_k

    family = family_of(model.config)
    conditions = ablation.grid_conditions(
        find_moe_layers(model, family), top_k(model.config), args.grid, bool(family.shared_experts)
    )
    kwargs = dict(batch_size=args.batch_size, seed=args.seed)
    if args.benchmark == "mmlu":
        results = ablation.score_multiple_choice(
            model, tokenizer, texts, labels["answer"], conditions, max_length=args.max_length, **kwargs
        )
    else:
        results = ablation.heldout_loss(model, tokenizer, texts, conditions, max_length=args.max_length, **kwargs)
    item_labels = pd.DataFrame({k: v for k, v in labels.items() if k != "answer"}).rename(columns={"id": "doc_id"})
    return results.join(item_labels, on="item").assign(model=args.model)


def _lens_table(args, model, tokenizer, texts, labels):
    import pandas as pd

    from moe_lib.analysis.ablation import encode_batches, letter_token_ids
    from moe_lib.analysis.lens import logit_lens, summarize_lens

    frames = []
    for condition in lens_conditions():
        ablation = None if condition.is_baseline else {**condition.ablate_kwargs(), "seed": args.seed}
        if args.benchmark == "mmlu":
            letters = letter_token_ids(tokenizer)
            batches = encode_batches(
                tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length, keep="end"
            )
            answer_ids = [letters[a] for a in labels["answer"]]
            lens = logit_lens(model, batches, answer_ids=answer_ids, candidates=letters, ablation=ablation)
            lens = lens.join(pd.DataFrame({k: labels[k] for k in ("subject", "domain")}), on="item")
        else:
            batches = encode_batches(tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length)
            lens = logit_lens(model, batches, ablation=ablation)
            lens = summarize_lens(lens.join(pd.DataFrame({"domain": labels["domain"]}), on="item"), by=["domain"])
        frames.append(lens.assign(**condition.columns()))
    return pd.concat(frames, ignore_index=True).assign(model=args.model)


def run(args: argparse.Namespace) -> int:
    from moe_lib.analysis.ablation import summarize_accuracy, summarize_loss
    from moe_lib.cache import cached_table, fingerprint
    from moe_lib.models.registry import load, model_identity

    model, tokenizer = load(args.model, revision=args.revision, device=args.device, dtype=args.dtype)
    if args.max_length is None:
        args.max_length = int(model.config.max_position_embeddings) if args.benchmark == "mmlu" else 256
    texts, labels = mmlu_items(args) if args.benchmark == "mmlu" else heldout_items(args)
    identity = {
        **model_identity(model, name=args.model, revision=args.revision),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "benchmark": args.benchmark,
        "sample": fingerprint(texts, labels),
        "max_length": args.max_length,
        "seed": args.seed,
        "ablation_version": ABLATION_VERSION,
    }
    results = cached_table(
        f"ablation-{args.benchmark}",
        {**identity, "grid": args.grid},
        lambda: _grid_table(args, model, tokenizer, texts, labels),
    )
    if not args.no_lens:
        cached_table(f"lens-{args.benchmark}", identity, lambda: _lens_table(args, model, tokenizer, texts, labels))
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
