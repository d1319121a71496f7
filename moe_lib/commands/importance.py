"""`python -m moe_lib importance MODEL --texts FILE --out STORE.zarr`: every expert's importance.

One xarray Dataset over (layer, expert): frequency, mean routing weight and REAP from one
hooked forward; the held-out loss increase when each expert alone is removed (slot
dropped, with and without renormalising), with bootstrap intervals over the texts; and
per layer Spearman's rho between each observational score and the causal one. See
:mod:`moe_lib.interventions.importance` and :mod:`moe_lib.interventions.importance_scores`.

The store's attrs hold the key of what it was made from (model weights, texts, settings):
run again with the same inputs, it is reported, not recomputed. An interrupted run keeps
its finished batches in ``STORE.zarr.work/`` and resumes from them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "importance",
        help="score every expert: frequency, mean weight, REAP and the loss increase when it is removed",
        description="Score every expert of every MoE layer of MODEL on the texts of FILE: observational scores "
        "(share of assignments, mean routing weight, REAP = mean of weight x expert-output norm) from one forward, "
        "the causal score (next-token loss increase when that expert alone is removed, its slot dropped, with and "
        "without renormalising) with bootstrap intervals over texts, and per layer the Spearman agreement of each "
        "observational score with the causal one. Writes one xarray Dataset (Zarr).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="registry name (see `info`), hub id org/name, or a local folder")
    parser.add_argument("--texts", type=Path, required=True, help="one text per line, or .jsonl with a 'text' field")
    parser.add_argument("--out", type=Path, required=True, help="the Zarr store to write, e.g. olmoe-importance.zarr")
    parser.add_argument("--max-length", type=int, default=256, help="tokens kept per text")
    parser.add_argument("--batch-size", type=int, default=8, help="texts per forward")
    parser.add_argument("--no-causal", action="store_true", help="observational scores only (one forward per batch)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples over texts")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--revision", help="hub branch, tag or commit, or a training run's checkpoint (step-000480)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    parser.set_defaults(func=run)


def read_texts_argument(path: Path) -> list[str]:
    """Return the texts of ``--texts``; raise naming the argument if there are none to read."""
    from moe_lib.commands.trace import TextsFileError, read_texts

    try:
        texts, _ = read_texts(path)
    except TextsFileError as error:
        raise ValueError(f"--texts {error}") from None
    if not any(text.strip() for text in texts):
        raise ValueError(f"--texts {path}: holds no text, only blank lines")
    return texts


def check_positive(name: str, value: int) -> None:
    """Raise naming the argument unless ``value`` is a positive integer."""
    if value <= 0:
        raise ValueError(f"{name} {value}: must be a positive integer")


def stored_key(path: Path) -> str | None:
    """Return the cache key a complete Zarr store at ``path`` says it was made for, else None."""
    import zarr

    try:
        return zarr.open_group(path, mode="r").attrs.get("cache_key")
    except Exception:  # not a Zarr group: not ours either way
        return None


def write_store(ds, out: Path) -> None:
    """Write ``ds`` to ``out`` under ``out.partial``, renamed into place when complete."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    ds.to_zarr(partial, mode="w-", consolidated=False)
    os.rename(partial, out)


def run(args: argparse.Namespace) -> int:
    from moe_lib.core.cache import cache_key
    from moe_lib.interventions.importance import expert_importance, importance_identity
    from moe_lib.models.registry import load

    for name in ("--max-length", "--batch-size", "--n-boot"):
        check_positive(name, getattr(args, name[2:].replace("-", "_")))
    texts = read_texts_argument(args.texts)
    if args.out.exists() and stored_key(args.out) is None:
        raise FileExistsError(f"--out {args.out}: exists and is not an importance store; nothing was overwritten")
    model, tokenizer = load(args.model, revision=args.revision, device=args.device, dtype=args.dtype)
    identity = importance_identity(model, name=args.model, texts=texts, max_length=args.max_length,
                                   causal=not args.no_causal, n_boot=args.n_boot, seed=args.seed,
                                   revision=args.revision)
    key = cache_key(identity)
    if args.out.exists():
        if stored_key(args.out) != key:
            raise FileExistsError(f"--out {args.out}: holds scores of another model, texts or settings; "
                                  "nothing was overwritten")
        print(f"{args.out}: already holds these scores (key {key})")
        return 0
    work_dir = args.out.with_name(args.out.name + ".work")
    ds = expert_importance(model, tokenizer, texts, causal=not args.no_causal, batch_size=args.batch_size,
                           max_length=args.max_length, n_boot=args.n_boot, seed=args.seed, work_dir=work_dir,
                           work_identity=identity)
    ds.attrs |= {"model": args.model, "texts_file": args.texts.name, "cache_key": key,
                 "cache_identity": json.dumps(identity, sort_keys=True, default=str)}
    write_store(ds, args.out)
    shutil.rmtree(work_dir, ignore_errors=True)
    print(f"{args.out}: {ds.sizes['layer']} MoE layers x {ds.sizes['expert']} experts, {ds.sizes['doc']} texts")
    if "spearman" in ds:
        print(ds["spearman"].sel(renormalize=False).to_pandas().round(2).to_string())
    return 0
