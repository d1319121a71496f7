"""Launch a sharded trace on gloo ranks in spawned processes, as torchrun would (issue 15).

Each rank loads the same saved tiny model, runs one thread (as torchrun's default
OMP_NUM_THREADS=1 does) and calls ``collect_trace_sharded``. ``crash`` kills one rank
outright (``os._exit``, no cleanup, like an OOM kill) after a number of forwards, once
it has recorded some progress.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, world_size: int, init_file: str, model_dir: str, texts: list[str],
               store: str, options: dict, crash: dict | None) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from moe_lib.core.sharded import collect_trace_sharded
    from moe_lib.core.trace_store import ranks_path

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        rank_options = dict(options)
        rank_options.update((options.get("per_rank") or {}).get(rank, {}))
        rank_options.pop("per_rank", None)
        if crash is not None and crash["rank"] == rank:
            calls = {"n": 0}
            record = ranks_path(store) / f"rank-{rank:05d}.json"

            def die(module, args, kwargs):
                # Die once the writer thread has recorded progress, so that a resume has
                # written tokens to skip (the writes run behind the forwards).
                calls["n"] += 1
                if calls["n"] > crash["after_forwards"] and record.exists():
                    os._exit(3)

            model.register_forward_pre_hook(die, with_kwargs=True)
        collect_trace_sharded(model, tokenizer, texts, store=store, progress=False, **rank_options)
    finally:
        dist.destroy_process_group()


def run_ranks(world_size: int, model_dir: Path, texts: list[str], store: Path, tmp: Path,
              crash: dict | None = None, **options) -> None:
    """Trace ``texts`` into ``store`` with ``world_size`` gloo ranks; raise if any rank fails.

    ``options`` go to ``collect_trace_sharded``; ``per_rank={rank: {...}}`` overrides some
    for one rank (to launch ranks with different settings).
    """
    init_file = tmp / f"init-{os.urandom(4).hex()}"
    mp.spawn(_rank_main, args=(world_size, str(init_file), str(model_dir), texts, str(store), options, crash),
             nprocs=world_size, join=True)
