"""`python -m moe_lib prune MODEL --texts FILE --criterion C --keep N --out FOLDER`: a pruned checkpoint.

Scores every expert on the texts (:mod:`moe_lib.interventions.importance`), keeps in every
MoE layer the N most important by the criterion, and writes the model with the others
sliced out of its routers and experts (:mod:`moe_lib.interventions.pruning`): a
save_pretrained folder that loads with AutoModelForCausalLM (after ``import moe_lib`` for
the project's cross-layer recipe), its tokenizer, and ``removed_experts.json``. Families
whose router cannot be sliced safely are refused before anything is computed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_command(subparsers) -> None:
    from moe_lib.interventions.pruning import CRITERIA

    parser = subparsers.add_parser(
        "prune",
        help="write a checkpoint keeping the N most important experts of every MoE layer",
        description="Rank every expert of MODEL on the texts of FILE by a criterion (frequency: share of "
        "assignments; weight: mean routing weight; reap: mean of weight x expert-output norm; causal: loss increase "
        "when removed alone), keep the N best of every MoE layer, and save the model with the others sliced out of "
        "its routers and experts (save_pretrained), with the removed experts listed in removed_experts.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="registry name (see `info`), hub id org/name, or a local folder")
    parser.add_argument("--texts", type=Path, required=True, help="one text per line, or .jsonl with a 'text' field")
    parser.add_argument("--criterion", choices=CRITERIA, required=True, help="how experts are ranked")
    parser.add_argument("--keep", type=int, required=True, help="experts kept per MoE layer (top_k <= N < E)")
    parser.add_argument("--out", type=Path, required=True, help="the new checkpoint folder (must not exist)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens kept per text")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward")
    parser.add_argument("--revision", help="hub branch, tag or commit, or a training run's checkpoint (step-000480)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moe_lib.commands.importance import check_positive, read_texts_argument
    from moe_lib.core.cache import fingerprint
    from moe_lib.interventions.importance import expert_importance
    from moe_lib.interventions.pruning import (
        check_keep,
        check_prunable,
        criterion_score,
        least_important,
        prune_model,
        save_pruned,
    )
    from moe_lib.models.families import n_experts
    from moe_lib.models.registry import load

    # cheap checks first: a bad argument costs no model load and writes nothing
    check_positive("--keep", args.keep)
    check_positive("--max-length", args.max_length)
    check_positive("--batch-size", args.batch_size)
    if args.out.exists():
        raise FileExistsError(f"--out {args.out}: already exists; nothing was overwritten")
    texts = read_texts_argument(args.texts)
    model, tokenizer = load(args.model, revision=args.revision, device=args.device, dtype=args.dtype)
    check_prunable(model.config)
    check_keep(args.keep, model.config)
    total = n_experts(model.config)
    scores = expert_importance(model, tokenizer, texts, causal=args.criterion == "causal", batch_size=args.batch_size,
                               max_length=args.max_length, n_boot=100)
    removed = least_important(criterion_score(scores, args.criterion), total - args.keep)
    pruned = prune_model(model, removed)
    about = {"source_model": args.model, "revision": args.revision, "criterion": args.criterion, "keep": args.keep,
             "texts_file": args.texts.name, "texts_fingerprint": fingerprint(texts)}
    save_pruned(pruned, tokenizer, removed, args.out, about)
    print(f"{args.out}: {args.keep} of {total} experts kept in each of {len(removed)} MoE layers "
          f"(by {args.criterion}); removed: {removed}")
    return 0
