"""`python -m moe_lib build`: everything the site reads, from nothing, each step cached.

Steps, each skipped when its result exists: the corpus, the tokenizer, the committed
domain probe (rewritten from the corpus so its fingerprint follows the corpus), both
default models (trained or resumed, tracing the probes at every checkpoint), every probe
trace the chapters read, and every analysis table: the cells labelled ``data`` of
``index.qmd`` and ``chapters/*.qmd`` run in-process with the chapter's parameters, so the
build computes exactly what the chapters will read, without rendering anything.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from moe_lib.models.registry import PROJECT_ROOT

RECIPE_NAMES = ("standard", "cross-layer")


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build corpus, tokenizer, both models, their traces and every analysis the site reads",
        description="Build, from nothing, what `quarto render` needs: corpus and tokenizer (if "
        "missing), the domain probe file, the standard and cross-layer models (trained or resumed), "
        "the probe traces of every checkpoint and the analysis tables of every chapter (the cells "
        "labelled `data`). Each step is cached; a second run finds everything and returns quickly.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=["default", "tiny"], default="default",
                        help="model preset: the site's default models, or the tiny test models")
    parser.add_argument("--skip-train", action="store_true",
                        help="do not train: use the saved checkpoints and cached traces as they are")
    parser.add_argument("--threads", type=int, help="torch threads for training (unset: torch's choice)")
    parser.add_argument("--chapters", nargs="*", type=Path,
                        help="chapter files whose data cells to run (default: index.qmd and chapters/*.qmd)")
    parser.add_argument("--stores-file", type=Path, metavar="FILE",
                        help="write the paths of the stores the site reads (every analysis table and the "
                        "final domains traces), one a line, for `git add -f $(cat FILE)`")
    parser.set_defaults(func=run)


def _step(title: str) -> float:
    print(f"[build] {title}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"[build]   done in {time.perf_counter() - start:.1f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    from moe_lib import cli, site
    from moe_lib.site.chapters import chapter_files, run_chapter_data
    from moe_lib.site.probes import write_domain_probe

    corpus, tokenizer = PROJECT_ROOT / "datasets" / "corpus", PROJECT_ROOT / "datasets" / "tokenizer"
    models = [f"{recipe}-{args.preset}" for recipe in RECIPE_NAMES]
    if not (corpus / "train.jsonl").is_file() and not args.skip_train:
        start = _step("corpus: building datasets/corpus from the registries")
        if cli.main(["corpus", "--out", str(corpus)]):
            return 1
        _done(start)
    if not (tokenizer / "tokenizer.json").is_file():
        start = _step("tokenizer: training datasets/tokenizer")
        if cli.main(["tokenizer", "--corpus", str(corpus), "--out", str(tokenizer)]):
            return 1
        _done(start)
    if (corpus / "validation.jsonl").is_file():
        start = _step("domain probe: datasets/probe/domains.jsonl from the validation split")
        print(f"[build]   fingerprint {write_domain_probe(corpus / 'validation.jsonl')}")
        _done(start)
    for recipe in RECIPE_NAMES if not args.skip_train else ():
        start = _step(f"model {recipe}-{args.preset}: training or resuming (checkpoints traced as they come)")
        argv = ["train", recipe, "--preset", args.preset, "--out", str(site.models_dir() / f"{recipe}-{args.preset}")]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        if cli.main(argv):
            return 1
        _done(start)
    for model in models:
        start = _step(f"traces of {model}: domains probe at every checkpoint, contextual probe at the final one")
        site.checkpoints(model, "domains")
        site.trace(model, "contextual")
        _done(start)
    for path in args.chapters or chapter_files():
        start = _step(f"analyses of {path.relative_to(PROJECT_ROOT) if path.is_absolute() else path}")
        run_chapter_data(Path(path), {"models": models} if args.preset != "default" else {})
        _done(start)
    read = site_stores(models)
    if args.stores_file:
        tmp = args.stores_file.with_name(args.stores_file.name + ".tmp")
        tmp.write_text("".join(f"{p}\n" for p in read))
        tmp.replace(args.stores_file)
    size = sum(f.stat().st_size for p in read for f in Path(p).rglob("*") if f.is_file())
    print(f"[build] the site reads {len(read)} stores ({size / 1e6:.1f} MB); all cached. Now run `quarto render`.")
    return 0


def site_stores(models: list[str]) -> list[str]:
    """Return the paths of the stores read so far in this process that a fresh clone needs:
    every analysis table and ablation run, and the final domains trace of each model (a base
    for new tables)."""
    from moe_lib import site
    from moe_lib.core import cache

    used = site.provenance()
    keep = set(used.loc[used["kind"].isin(["table", "ablation"]), "cache_key"])
    keep |= {site.trace_key(m, "domains") for m in models}
    stores = cache.list_stores()
    return sorted(str(Path(p).relative_to(PROJECT_ROOT)) if Path(p).is_relative_to(PROJECT_ROOT) else p
                  for p in stores.loc[stores["key"].isin(keep), "path"])
