"""Time each analysis of moe_lib.analysis on synthetic traces of millions of tokens.

    python benchmarks/bench_analysis.py --tokens 1000000 4000000

The trace is seeded random routing (skewed per-layer loads, texts of 512 tokens, a vocabulary
of 8,192 ids, three domains, one polysemantic token with two meanings), built by
tests/helpers_traces.py. Timings are wall-clock seconds of one call (the fastest of --repeats), single process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers_traces import random_trace  # noqa: E402

from moe_lib.analysis import (  # noqa: E402
    crosslayer,
    distribution,
    paths,
    route_clusters,
    saturation,
    specialization,
)


def with_polysemous_token(ds, token_id: int, seed: int):
    """Return ``ds`` with is_target True on ``token_id`` and a random meaning a/b there."""
    rng = np.random.default_rng(seed)
    target = ds["token_id"].values == token_id
    meaning = np.where(target, rng.choice(["a", "b"], target.size), "").astype(object)
    return ds.assign_coords(is_target=("token", target), meaning=("token", meaning))


def relabelled(ds, share: float, seed: int):
    """Return a copy of ``ds`` as an "earlier checkpoint": for a random ``share`` of tokens,
    each layer's expert ids pass through a random permutation (ids stay distinct per token)."""
    rng = np.random.default_rng(seed)
    ids = ds["expert_id"].values.copy()
    n_experts = int(ds.attrs["n_experts"])
    for index in range(ids.shape[1]):
        changed = rng.random(ids.shape[0]) < share
        ids[changed, index] = rng.permutation(n_experts).astype(ids.dtype)[ids[changed, index]]
    return ds.copy(data={**ds.data_vars, "expert_id": ids})


def analyses(ds, earlier):
    """Return (name, zero-argument call) for every analysis timed."""
    checkpoints = {"earlier": earlier, "final": ds}
    targets = crosslayer.target_occurrences(ds)
    return [
        ("distribution.weight_by_slot", lambda: distribution.weight_by_slot(ds)),
        ("distribution.expert_load", lambda: distribution.expert_load(ds)),
        ("distribution.load_balance", lambda: distribution.load_balance(ds)),
        ("distribution.router_entropy (weights)", lambda: distribution.router_entropy(ds.drop_vars(
            "router_logits", errors="ignore"))),
        ("distribution.router_entropy (logits)", lambda: distribution.router_entropy(ds))
        if "router_logits" in ds else None,
        ("distribution.consecutive_routing", lambda: distribution.consecutive_routing(ds)),
        ("saturation.router_saturation (2 ckpts)", lambda: saturation.router_saturation(checkpoints)),
        ("saturation.token_expert_distribution", lambda: saturation.token_expert_distribution(checkpoints, [3, 4])),
        ("crosslayer.meaning_flow", lambda: crosslayer.meaning_flow(ds)),
        ("crosslayer.specialization_js (200 perm)", lambda: crosslayer.specialization_js(ds)),
        ("crosslayer.expert_continuity (all, 5 perm)", lambda: crosslayer.expert_continuity(ds)),
        ("crosslayer.expert_continuity (targets)", lambda: crosslayer.expert_continuity(targets)),
        ("paths.path_windows", lambda: paths.path_windows(ds)),
        ("paths.path_groups (all layers)", lambda: paths.path_groups(ds)),
        ("paths.paths_to_cover", lambda: paths.paths_to_cover(ds)),
        ("paths.meaning_prediction", lambda: paths.meaning_prediction(ds)),
        ("route_clusters (3000 sampled)", lambda: route_clusters.cluster_label_agreement(
            ds, route_clusters.cluster_routes(ds), n_permutations=100)),
        ("route_clusters.route_map (2000 sampled)", lambda: route_clusters.route_map(ds)),
        ("specialization.domain_expert_share", lambda: specialization.domain_expert_share(ds)),
        ("specialization.domain_tv_distance (5 perm)", lambda: specialization.domain_tv_distance(ds)),
        ("specialization.vocabulary_specialization", lambda: specialization.vocabulary_specialization(ds)),
        ("specialization.characteristic_tokens", lambda: specialization.characteristic_tokens(ds)),
        ("specialization.coactivation", lambda: specialization.coactivation(ds)),
    ]


def main(argv=None) -> int:
    """Time every analysis at each trace size; print a Markdown table of seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1_000_000, 4_000_000],
                        help="trace sizes in tokens (default: 1M and 4M)")
    parser.add_argument("--layers", type=int, default=8, help="MoE layers (default 8)")
    parser.add_argument("--experts", type=int, default=64, help="experts per layer (default 64)")
    parser.add_argument("--top-k", type=int, default=4, help="experts per token (default 4)")
    parser.add_argument("--with-logits", action="store_true",
                        help="also store router_logits (float16, 128 bytes per token-layer at 64 "
                             "experts) and time the entropy from them")
    parser.add_argument("--only", default=None, help="time only analyses whose name contains this")
    parser.add_argument("--repeats", type=int, default=1,
                        help="calls per analysis; the fastest is kept (the CPU may be shared)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    results = {}
    for n_tokens in args.tokens:
        start = time.perf_counter()
        trace_kwargs = dict(n_layers=args.layers, n_experts=args.experts, top_k=args.top_k,
                            seq_len=512, n_vocab=8192, with_logits=args.with_logits)
        ds = with_polysemous_token(random_trace(n_tokens, seed=args.seed, **trace_kwargs), 3, args.seed)
        earlier = relabelled(ds, share=0.5, seed=args.seed)
        build = time.perf_counter() - start
        tqdm.write(f"{n_tokens:,} tokens: traces built in {build:.1f} s")
        todo = [(name, call) for name, call in filter(None, analyses(ds, earlier))
                if args.only is None or args.only in name]
        for name, call in tqdm(todo, desc=f"{n_tokens:,} tokens"):
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                call()
                seconds.append(time.perf_counter() - start)
            results[(name, n_tokens)] = min(seconds)
    table = pd.Series(results).unstack()
    table.columns = [f"{n:,} tokens (s)" for n in table.columns]
    print(f"\n{args.layers} layers, top-{args.top_k} of {args.experts} experts\n")
    print(table.round(2).to_markdown() if _has_tabulate() else table.round(2).to_string())
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
