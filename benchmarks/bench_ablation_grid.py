"""The reusing ablation grid against the naive one: wall-clock ratio, measured in one run.

The naive grid runs the whole model once per condition and batch. The reusing grid runs
it once per batch (the baseline), keeping the output of the layer below each layer where
some condition starts, and computes only the layers from there on for each condition.
Both run on the same batches with two scorers: the answer-letter scorer (one position per
text, as for MMLU: the forward dominates) and next-token loss (every position: the
unembedding adds a cost the reuse cannot save). The script times them in alternation
(medians over repetitions), checks they agree, and prints the ratios next to the one
predicted by counting decoder-layer calls.

With ``--memory`` it measures instead the peak resident memory of one reusing loss grid
over texts of varied lengths, in two fresh processes: with glibc's default malloc, and with
:func:`~moe_lib.interventions.ablation_runs.large_blocks_by_mmap` (what the ``ablate``
command and the site set); it prints both peaks and their ratio.

Run: python benchmarks/bench_ablation_grid.py [--model PATH_OR_NAME] [--grid full] [--repeats 3] [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from moe_lib.core.capture import find_moe_layers
from moe_lib.interventions.ablation import (
    encode_batches,
    grid_conditions,
    letter_scorer,
    next_token_score,
    run_grid,
    start_layer,
)
from moe_lib.interventions.ablation_runs import large_blocks_by_mmap
from moe_lib.models import standard
from moe_lib.models.families import family_of, top_k
from moe_lib.models.tiny import tiny_tokenizer
from rss import peak_rss_mib


def default_shaped(n_layers: int, device: str):
    """Return a random model of the site's default standard recipe, 8,192-entry vocabulary."""
    recipe = standard.preset("default", n_layers=n_layers, seq_len=512)
    torch.manual_seed(0)
    model = standard.build_model(recipe, 8192, {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
    return model.to(device).eval()


def sample_texts(n_texts: int, varied: bool = False) -> list[str]:
    """Real text on every machine: the sources of standard-library modules, cut to 2,000
    characters (``varied``: 300 to 2,000, so that every batch has another length)."""
    import argparse as m1
    import csv as m2
    import inspect
    import json as m3
    import textwrap as m4

    source = "\n".join(inspect.getsource(m) for m in (m1, m2, m3, m4))
    lengths = [300 + (i * 617) % 1701 if varied else 2000 for i in range(n_texts)]
    return [source[i * 2000 : i * 2000 + lengths[i]] for i in range(n_texts)]


def predicted_ratio(conditions, moe_layers, n_layers: int) -> float:
    """Return naive over reusing cost in decoder-layer calls (attention and MoE alike)."""
    naive = len(conditions) * n_layers
    reuse = n_layers + sum(n_layers - start_layer(c, moe_layers) for c in conditions if not c.is_baseline)
    return naive / reuse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="registry name, hub id or folder (default: a random default-recipe model)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the random model (default 4)")
    parser.add_argument("--grid", choices=["default", "full"], default="default")
    parser.add_argument("--n-texts", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timings of each grid (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true", help="peak memory with and without large_blocks_by_mmap")
    parser.add_argument("--malloc", choices=["default", "mmap"], help=argparse.SUPPRESS)  # one --memory child
    args = parser.parse_args(argv)
    if args.memory:
        return memory_report(argv if argv is not None else sys.argv[1:])

    if args.model:
        from moe_lib.models.registry import load

        model, tokenizer = load(args.model, device=args.device)
    else:
        model = default_shaped(args.layers, args.device)
        tokenizer = tiny_tokenizer(vocab_size=8192)
    family = family_of(model.config)
    moe_layers = find_moe_layers(model, family)
    conditions = grid_conditions(moe_layers, top_k(model.config), args.grid, bool(family.shared_experts))
    texts = sample_texts(args.n_texts, varied=args.malloc is not None)
    batches = encode_batches(tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length)
    if args.malloc is not None:
        if args.malloc == "mmap" and not large_blocks_by_mmap():
            raise SystemExit("large_blocks_by_mmap: not glibc, nothing to measure")
        run_grid(model, batches, conditions, next_token_score, progress=False)
        print(json.dumps({"peak_rss_gb": peak_rss_mib() / 1024,
                          "n_batches": len(batches), "n_conditions": len(conditions)}))
        return 0

    scorers = {
        "letters": letter_scorer([10, 20, 30, 40], answers=np.zeros(len(texts), dtype=int)),
        "loss": next_token_score,
    }
    times = {(name, reuse): [] for name in scorers for reuse in (True, False)}
    results = {}
    for repeat in range(args.repeats):
        for name, score in scorers.items():
            for reuse in (True, False) if repeat % 2 == 0 else (False, True):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                results[name, reuse] = run_grid(model, batches, conditions, score, reuse=reuse, progress=False)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name, reuse].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    reused, naive = results["loss", True]["nll_sum"].to_numpy(), results["loss", False]["nll_sum"].to_numpy()
    letters = [f"logprob_{c}" for c in "ABCD"]
    report = {
        "model": args.model or f"random standard-default recipe, {args.layers} layers",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "grid": args.grid,
        "n_conditions": len(conditions),
        "n_batches": len(batches),
        "tokens_per_condition": int(sum(b["lengths"].sum() for b in batches)),
        "repeats": args.repeats,
        **{f"{name}_{'reuse' if reuse else 'naive'}_s": round(value, 3) for (name, reuse), value in median.items()},
        "letters_ratio": round(median["letters", False] / median["letters", True], 3),
        "loss_ratio": round(median["loss", False] / median["loss", True], 3),
        "predicted_ratio": round(predicted_ratio(conditions, moe_layers, model.config.num_hidden_layers), 3),
        "max_relative_difference_loss": float(np.max(np.abs(reused - naive) / np.abs(naive))),
        "max_abs_difference_letters": float(
            np.abs(results["letters", True][letters].to_numpy() - results["letters", False][letters].to_numpy()).max()
        ),
    }
    print(json.dumps(report, indent=1))
    return 0


def memory_report(argv: list[str]) -> int:
    """Run one grid per malloc setting, each in a fresh process, and print both peaks and their ratio."""
    base = [a for a in argv if a != "--memory"]
    peaks = {}
    for malloc in ("default", "mmap"):
        out = subprocess.run([sys.executable, __file__, *base, "--malloc", malloc], check=True,
                             capture_output=True, text=True).stdout
        peaks[malloc] = json.loads(out.strip().splitlines()[-1])
    report = {
        **{f"peak_rss_gb_{malloc}": round(peak["peak_rss_gb"], 3) for malloc, peak in peaks.items()},
        "ratio_default_over_mmap": round(peaks["default"]["peak_rss_gb"] / peaks["mmap"]["peak_rss_gb"], 2),
        "n_batches": peaks["mmap"]["n_batches"],
        "n_conditions": peaks["mmap"]["n_conditions"],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
