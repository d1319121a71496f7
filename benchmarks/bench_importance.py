"""The causal importance scores' 64 single-expert ablations: prefix reuse against naive, in one run.

A default-shaped model (4 MoE layers x 16 experts, top-2, hidden 128, random weights, an
8,192-entry vocabulary) removes each expert of each layer alone, its slot dropped, and
scores next-token loss on real text: 64 conditions and the baseline. The naive grid runs
the whole model per condition; the reusing grid
(:func:`moe_lib.interventions.ablation.run_grid`) computes the layers below each ablated
layer once per batch, and unembeds only the positions a condition changed (in the last
layer, the tokens routed to the removed expert). Both run on the same batches, in
alternation (medians over repetitions); the script checks they agree and prints the
measured ratio beside the one predicted by counting decoder-layer calls and unembeddings
(the LM head and loss, weighted by ``--unembed-cost`` decoder layers).

Run: python benchmarks/bench_importance.py [--n-texts 8] [--max-length 256] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from moe_lib.core.capture import find_moe_layers
from moe_lib.interventions.ablation import encode_batches, next_token_score, run_grid, start_layer
from moe_lib.interventions.importance import single_expert_conditions
from moe_lib.models import standard
from moe_lib.models.families import family_of, n_experts, top_k
from moe_lib.models.tiny import tiny_tokenizer


def default_model():
    """Return a random model of the standard recipe's default preset (8,192-entry vocabulary)."""
    torch.manual_seed(0)
    model = standard.build_model(standard.preset("default"), 8192, {"pad_token_id": 0, "bos_token_id": 1,
                                                                    "eos_token_id": 2})
    return model.eval()


def sample_texts(n_texts: int) -> list[str]:
    """Real text on every machine: standard-library sources, 2,000 characters each."""
    import argparse as m1
    import csv as m2
    import inspect
    import json as m3
    import textwrap as m4

    source = "\n".join(inspect.getsource(m) for m in (m1, m2, m3, m4))
    return [source[i * 2000:(i + 1) * 2000] for i in range(n_texts)]


def predicted_ratio(conditions, moe_layers, n_layers: int, unembed_cost: float, routed_share: float) -> float:
    """Return reusing over naive cost, in decoder-layer calls plus ``unembed_cost`` per unembedding
    of every token. A removal in the last decoder layer changes, and unembeds, only the tokens
    routed to the removed expert: ``routed_share`` (k / E) of them on average over its experts."""
    per_run = n_layers + unembed_cost
    naive = len(conditions) * per_run
    reuse = per_run
    for condition in conditions:
        if not condition.is_baseline:
            start = start_layer(condition, moe_layers)
            reuse += n_layers - start + unembed_cost * (routed_share if start == n_layers - 1 else 1)
    return reuse / naive


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="alternating timings of each grid")
    parser.add_argument("--unembed-cost", type=float, default=4.0,
                        help="cost of the LM head and loss in decoder layers, for the predicted ratio "
                        "(measured ~4 for the default model on one CPU core)")
    args = parser.parse_args(argv)
    model, tokenizer = default_model(), tiny_tokenizer(vocab_size=8192)
    moe_layers = find_moe_layers(model, family_of(model.config))
    conditions = single_expert_conditions(moe_layers, n_experts(model.config))
    conditions = [c for c in conditions if not c.renormalize]  # the 64 removals, slot dropped, and the baseline
    batches = encode_batches(tokenizer, sample_texts(args.n_texts), batch_size=args.batch_size,
                             max_length=args.max_length)
    times, results = {True: [], False: []}, {}
    for repeat in range(args.repeats):
        for reuse in (True, False) if repeat % 2 == 0 else (False, True):
            start = time.perf_counter()
            results[reuse] = run_grid(model, batches, conditions, next_token_score, reuse=reuse, progress=False)
            times[reuse].append(time.perf_counter() - start)
    median = {reuse: statistics.median(values) for reuse, values in times.items()}
    reused, naive = results[True]["nll_sum"].to_numpy(), results[False]["nll_sum"].to_numpy()
    report = {
        "model": "random standard-default recipe (4 layers, hidden 128, 16 experts, top-2)",
        "torch_threads": torch.get_num_threads(),
        "n_conditions": len(conditions),
        "n_batches": len(batches),
        "tokens_per_condition": int(sum(b["lengths"].sum() for b in batches)),
        "repeats": args.repeats,
        "reuse_s": round(median[True], 2),
        "naive_s": round(median[False], 2),
        "reuse_over_naive": round(median[True] / median[False], 3),
        "predicted_reuse_over_naive": round(predicted_ratio(
            conditions, moe_layers, model.config.num_hidden_layers, args.unembed_cost,
            top_k(model.config) / n_experts(model.config)), 3),
        "goal": 0.5,
        "max_relative_difference": float(np.max(np.abs(reused - naive) / np.abs(naive))),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
