"""Beyond one machine (issue 15): sharded tracing and analyses out of core, as ratios in one run.

    python benchmarks/bench_scale.py sharded --texts 96 --layers 4
    python benchmarks/bench_scale.py out-of-core --tokens 200000 2000000 --chunk 65536

``sharded`` traces the same texts with 1 and then 2 gloo ranks (one torch thread each, as
torchrun runs them), each rank timing its own ``collect_trace_sharded``; tokens/s is all
tokens over the slowest rank's time, and the ratio is that of the medians over ``--repeats``
runs of each, alternating (single runs on a shared machine vary by a quarter). It does so twice:
free, and with rank r pinned to core r. Free, a lone rank's tokenizing and writer threads
(``moe_lib.core.pipeline``) may run on the core it leaves idle (each rank's CPU seconds over
wall seconds are printed: 1.04 for a lone rank on 2026-12-03); pinned, each rank has one
core, which is what "N processes of one thread" compares. The machine's load average is printed
beside it: on a busy machine two ranks share the cores with everything else.

``out-of-core`` writes synthetic stores (default 16 MoE layers, top-8 of 64 experts, chunked
along token) of each size, then in a fresh process per size opens the store with Dask chunks
and runs the routing-basics analyses (weight by slot, expert load, balance, router entropy,
consecutive routing) and the specialization ones (domain shares, TV distance, vocabulary,
characteristic tokens, co-activation); it prints peak RSS and tokens/s per core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent


# -- sharded tracing ---------------------------------------------------------------------------
def _rank(rank: int, world_size: int, init_file: str, folder: str, n_texts: int, n_layers: int, out: str,
          pin: bool):
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    sys.path.insert(0, str(BENCHMARKS))
    from bench_capture import olmoe_shaped, sample_texts

    from moe_lib.core.sharded import collect_trace_sharded

    torch.set_num_threads(1)
    if pin:  # this process and every thread it starts from now on, on core ``rank`` alone
        os.sched_setaffinity(0, {rank % os.cpu_count()})
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    model = olmoe_shaped(n_layers, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = sample_texts(n_texts)
    dist.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    ds = collect_trace_sharded(model, tokenizer, texts, store=out, batch_size=8, progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    times: list = [None] * world_size
    dist.all_gather_object(times, (seconds, cpu_seconds))
    if rank == 0:
        Path(out + ".json").write_text(json.dumps({"tokens": ds.sizes["token"], "seconds": max(t for t, _ in times),
                                                   "cores_used": [round(c / t, 2) for t, c in times]}))
    dist.destroy_process_group()


def sharded(args) -> None:
    import torch.multiprocessing as mp

    sys.path.insert(0, str(BENCHMARKS))
    from bench_capture import sample_texts

    from moe_lib.models.tiny import tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tiny_tokenizer(sample_texts(64), vocab_size=8192).save_pretrained(tmp + "/tokenizer")
        for pin in (False, True):
            mode = "pinned" if pin else "free"
            results = {1: [], 2: []}
            for repeat in range(args.repeats):
                for world_size in (1, 2) if repeat % 2 == 0 else (2, 1):  # alternating: drift hits both
                    out = f"{tmp}/trace-{world_size}-{pin}-{repeat}.zarr"
                    load_before = os.getloadavg()[0]
                    mp.spawn(_rank, args=(world_size, f"{tmp}/init-{world_size}-{pin}-{repeat}", tmp + "/tokenizer",
                                          args.texts, args.layers, out, pin), nprocs=world_size, join=True)
                    result = json.loads(Path(out + ".json").read_text())
                    results[world_size].append(result["tokens"] / result["seconds"])
                    print(f"{mode}, {world_size} process(es): {result['tokens']} tokens in {result['seconds']:.1f} s = "
                          f"{results[world_size][-1]:,.0f} tokens/s, cores used per rank {result['cores_used']} "
                          f"(load average before {load_before:.1f}, after {os.getloadavg()[0]:.1f}, "
                          f"{os.cpu_count()} cores)")
            median = {n: statistics.median(values) for n, values in results.items()}
            print(f"{mode}: 2 processes over 1: {median[2] / median[1]:.2f}x (medians of {args.repeats} runs: "
                  f"{median[2]:,.0f} over {median[1]:,.0f} tokens/s)")


# -- analyses out of core ----------------------------------------------------------------------
def write_store(path: Path, n_tokens: int, n_layers: int, n_experts: int, top_k: int, chunk: int) -> None:
    """Write a seeded synthetic trace chunk by chunk (never whole in memory)."""
    import xarray as xr

    from moe_lib.core.trace_store import build_dataset

    rng = np.random.default_rng(0)
    load = np.exp(np.random.default_rng(1).standard_normal((n_layers, n_experts))).astype(np.float32)
    attrs = {"model": "synthetic", "family": "olmoe", "scoring": "softmax_topk", "top_k": top_k,
             "n_experts": n_experts, "schema_version": 1}
    for start in range(0, n_tokens, chunk):
        size = min(chunk, n_tokens - start)
        # Exp(1) draws can be exactly 0 in float32: the floor keeps the weights finite.
        keys = np.maximum(rng.standard_exponential((size, n_layers, n_experts), dtype=np.float32), 1e-30) / load
        ids = np.argsort(keys, axis=-1)[..., :top_k].astype(np.int16)
        chosen = np.take_along_axis(keys, ids.astype(np.int64), axis=-1)
        weight = (chosen[..., :1] / chosen).astype(np.float32)
        token = np.arange(start, start + size)
        coords = {"seq": token // 512, "pos": token % 512, "token_id": rng.integers(0, 8192, size).astype(np.int32),
                  "token_str": np.array([f"t{i}" for i in range(size)], dtype=object),
                  "domain": np.array(["code", "news", "speech"], dtype=object)[(token // 512) % 3]}
        ds = build_dataset(list(range(n_layers)), coords, {"expert_id": ids, "weight": weight / weight.sum(-1, keepdims=True)}, attrs)
        if start == 0:
            encoding = {name: {"chunks": (chunk,) + var.shape[1:]} for name, var in ds.variables.items() if "token" in var.dims}
            encoding["expert_id"]["_FillValue"] = -1
            ds.to_zarr(path, mode="w-", encoding=encoding, consolidated=False)
        else:
            ds.to_zarr(path, append_dim="token", consolidated=False)
    del xr


def analyse_child(path: str, chunk: int) -> None:
    """(subprocess) run the analyses on the chunked store; print seconds and peak RSS."""
    import dask

    from moe_lib import open_trace
    from moe_lib.analysis import distribution, specialization
    from rss import peak_rss_mib

    dask.config.set(num_workers=os.cpu_count())
    ds = open_trace(path, chunks={"token": chunk})
    start = time.perf_counter()
    for analysis in (distribution.weight_by_slot, distribution.expert_load, distribution.load_balance,
                     distribution.router_entropy, distribution.consecutive_routing,
                     specialization.domain_expert_share, specialization.domain_tv_distance,
                     specialization.vocabulary_by_kind, specialization.characteristic_tokens,
                     specialization.coactivation):
        analysis(ds)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    print(json.dumps({"tokens": ds.sizes["token"], "seconds": seconds, "peak_mib": peak}))


def out_of_core(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        rows = []
        for n_tokens in args.tokens:
            path = Path(tmp) / f"t{n_tokens}.zarr"
            start = time.perf_counter()
            write_store(path, n_tokens, args.layers, args.experts, args.top_k, args.chunk)
            written = time.perf_counter() - start
            done = subprocess.run([sys.executable, __file__, "analyse-child", str(path), str(args.chunk)],
                                  check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(result)
            print(f"{n_tokens:>11,} tokens ({args.layers} layers, top-{args.top_k} of {args.experts}; "
                  f"store written in {written:.0f} s): analyses {result['seconds']:.1f} s, "
                  f"{n_tokens / result['seconds'] / os.cpu_count():,.0f} tokens/s per core, "
                  f"peak RSS {result['peak_mib']:.0f} MiB (load average {os.getloadavg()[0]:.1f})")
        if len(rows) > 1:
            print(f"peak RSS at {rows[-1]['tokens'] / rows[0]['tokens']:.0f}x the tokens: "
                  f"{rows[-1]['peak_mib'] / rows[0]['peak_mib']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("sharded", help="tokens/s of sharded tracing, 2 processes vs 1")
    one.add_argument("--texts", type=int, default=96, help="texts of about 256 tokens (default 96)")
    one.add_argument("--layers", type=int, default=4, help="decoder layers of the OLMoE-shaped model")
    one.add_argument("--repeats", type=int, default=3, help="runs of each world size, alternating (medians)")
    two = commands.add_parser("out-of-core", help="peak RSS and tokens/s of chunked analyses")
    two.add_argument("--tokens", type=int, nargs="+", default=[200_000, 2_000_000], help="store sizes")
    two.add_argument("--layers", type=int, default=16)
    two.add_argument("--experts", type=int, default=64)
    two.add_argument("--top-k", type=int, default=8)
    two.add_argument("--chunk", type=int, default=65536, help="tokens per Zarr chunk and Dask block")
    two.add_argument("--tmp", help="where to write the stores (default: the system's temp folder)")
    child = commands.add_parser("analyse-child")
    child.add_argument("path")
    child.add_argument("chunk", type=int)
    args = parser.parse_args()
    if args.command == "sharded":
        sharded(args)
    elif args.command == "out-of-core":
        out_of_core(args)
    else:
        analyse_child(args.path, args.chunk)


if __name__ == "__main__":
    main()
