"""`python -m moe_lib importance MODEL --texts FILE --out STORE.zarr`: every expert's importance.

One xarray Dataset over (layer, expert): frequency, mean routing weight and REAP from one
hooked forward; the held-out loss increase when each expert alone is removed (slot
dropped, with and without renormalising), with bootstrap intervals over the texts; and
per layer Spearman's rho between each observational score and the causal one. See
:mod:`moe_lib.interventions.importance` and :mod:`moe_lib.interventions.importance_scores`.

With ``--curves-texts HELDOUT``, the store also holds, in its group ``studies``
(``xr.open_zarr(STORE, group="studies")``, one row per condition and domain), the three
studies of :mod:`moe_lib.interventions.pruning_curves` scored on those held-out texts:
pruning curves (n = 1 .. E/2 experts removed in every layer by each criterion, against
random removals), each domain of the scored texts keeping only its E/2 most used experts,
and k' = 1 .. k - 1 experts per token. A ``domain`` field in a ``.jsonl`` file labels texts.

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
    parser.add_argument("--curves-texts", type=Path,
                        help="held-out texts (not those of --texts) on which to score pruning curves, per-domain "
                        "expert sets and fewer experts per token; stored in the group 'studies' (needs the causal score)")
    parser.add_argument("--n-draws", type=int, default=20, help="random removals per n on the pruning curves")
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


def texts_and_domains(path: Path, field: str = "domain") -> tuple[list[str], list[str] | None]:
    """Return a texts file's texts and, for a ``.jsonl`` file whose first record has
    ``field``, each text's domain (then every record must have it); else no domains."""
    import json

    from moe_lib.commands.trace import TextsFileError, read_texts

    texts = read_texts_argument(path)
    first = next(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if path.suffix != ".jsonl" or field not in json.loads(first):
        return texts, None
    try:
        texts, labels = read_texts(path, [field])
    except TextsFileError as error:
        raise ValueError(f"{error} (its first record has one)") from None
    return texts, [str(value) for value in labels[field]]


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


def write_store(ds, out: Path, studies=None) -> None:
    """Write ``ds`` (and the ``studies`` table, as group "studies") to ``out`` under
    ``out.partial``, renamed into place when complete."""
    from moe_lib.core.cache import table_to_dataset

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    ds.to_zarr(partial, mode="w-", consolidated=False)
    if studies is not None:
        table_to_dataset(studies).to_zarr(partial, group="studies", mode="w-", consolidated=False)
    os.rename(partial, out)


def run(args: argparse.Namespace) -> int:
    from moe_lib.core.cache import cache_key
    from moe_lib.interventions.importance import expert_importance, importance_identity
    from moe_lib.models.registry import load

    for name in ("--max-length", "--batch-size", "--n-boot", "--n-draws"):
        check_positive(name, getattr(args, name[2:].replace("-", "_")))
    if args.curves_texts and args.no_causal:
        raise ValueError("--curves-texts: the pruning curves rank experts by the causal score too; drop --no-causal")
    texts, domains = texts_and_domains(args.texts)
    held_out, held_out_domains = texts_and_domains(args.curves_texts) if args.curves_texts else (None, None)
    if args.out.exists() and stored_key(args.out) is None:
        raise FileExistsError(f"--out {args.out}: exists and is not an importance store; nothing was overwritten")
    model, tokenizer = load(args.model, revision=args.revision, device=args.device, dtype=args.dtype)
    identity = importance_identity(model, name=args.model, texts=texts, max_length=args.max_length,
                                   causal=not args.no_causal, n_boot=args.n_boot, seed=args.seed,
                                   revision=args.revision)
    if held_out is not None:
        from moe_lib.core.cache import fingerprint

        identity |= {"domains": fingerprint(texts, {"domain": domains or []}), "n_draws": args.n_draws,
                     "curves_texts": fingerprint(held_out, {"domain": held_out_domains or []})}
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
    studies = None if held_out is None else run_studies(args, model, tokenizer, ds, domains, held_out,
                                                         held_out_domains)
    write_store(ds, args.out, studies)
    shutil.rmtree(work_dir, ignore_errors=True)
    print(f"{args.out}: {ds.sizes['layer']} MoE layers x {ds.sizes['expert']} experts, {ds.sizes['doc']} texts")
    if "spearman" in ds:
        print(ds["spearman"].sel(renormalize=False).to_pandas().round(2).to_string())
    if studies is not None:
        print(f"{args.out}: {len(studies)} study rows in group 'studies' (pruning curves, domain sets, top-k)")
    return 0


def run_studies(args, model, tokenizer, scores, domains, held_out, held_out_domains):
    """Return the summary of the three pruning studies on the held-out texts."""
    from moe_lib.interventions import pruning_curves

    labelled = pruning_curves.study_conditions(model.config, scores, domains, n_draws=args.n_draws, seed=args.seed)
    rows = pruning_curves.run_studies(model, tokenizer, held_out, held_out_domains or ["all"] * len(held_out),
                                      labelled, batch_size=args.batch_size, max_length=args.max_length)
    return pruning_curves.summarize_studies(rows, labelled, seed=args.seed, n_boot=args.n_boot)
