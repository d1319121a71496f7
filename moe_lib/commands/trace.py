"""`python -m moe_lib trace MODEL --texts FILE --out STORE.zarr`: trace a model on texts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


class TextsFileError(ValueError):
    """A texts file that cannot be read, naming the file and line."""


def read_texts(path: Path, label_fields: list[str] = ()) -> tuple[list[str], dict[str, list]]:
    """Return the texts of ``path`` and any requested label fields.

    A ``.jsonl`` file holds one JSON object per line with a "text" field (and the label
    fields); any other file holds one text per line.
    """
    if not path.is_file():
        raise TextsFileError(f"{path}: no such file")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line_no = path.read_bytes()[: error.start].count(b"\n") + 1
        raise TextsFileError(f"{path}: line {line_no} is not valid UTF-8 ({error.reason})") from None
    texts, labels = [], {name: [] for name in label_fields}
    jsonl = path.suffix == ".jsonl"
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not jsonl:
            texts.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TextsFileError(f"{path}: line {line_no} is not JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise TextsFileError(f"{path}: line {line_no} has no string field 'text'")
        texts.append(record["text"])
        for name in label_fields:
            if name not in record:
                raise TextsFileError(f"{path}: line {line_no} has no label field {name!r}")
            labels[name].append(record[name])
    if not texts:
        raise TextsFileError(f"{path}: no texts (the file is empty)")
    if label_fields and not jsonl:
        raise TextsFileError(f"{path}: --label-fields needs a .jsonl texts file")
    return texts, labels


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "trace",
        help="capture every router decision of a model on a texts file into a Zarr store",
        description="Run MODEL on every text, capture each MoE layer's top-k experts and "
        "weights (and optionally the raw router logits), and write a routing trace that "
        "xarray.open_zarr opens. An interrupted run resumes where it stopped. Launched by "
        "torchrun (`torchrun --nproc-per-node N -m moe_lib trace ...`, several nodes through "
        "its rendezvous), each rank traces its share of the texts into the same store, which "
        "equals the one-process trace; a crashed run relaunched the same way resumes.",
    )
    parser.add_argument("model", help="registry name (see `info`), hub id org/name, or a local folder")
    parser.add_argument("--texts", type=Path, required=True, help="one text per line, or .jsonl with a 'text' field")
    parser.add_argument("--out", type=Path, required=True, help="the store to write, e.g. traces/olmoe.zarr")
    parser.add_argument("--max-length", type=int, default=256, help="tokens kept per text (default 256)")
    parser.add_argument("--batch-size", default="auto", help="texts per forward, or 'auto' (default)")
    parser.add_argument("--chunk-tokens", type=int, default=32768,
                        help="tokens per Zarr chunk, and per write (default 32768)")
    parser.add_argument("--router-logits", action="store_true", help="also store raw router logits (float16)")
    parser.add_argument("--predictions", action="store_true",
                        help="also store predicted_id, the argmax of the next-token logits at each token")
    parser.add_argument("--label-fields", default="", help="comma-separated .jsonl fields kept as token labels")
    parser.add_argument("--revision", help="hub branch, tag or commit (e.g. an OLMoE training checkpoint), "
                        "or a checkpoint of one of our training runs (step-000480)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--device-map", help="'auto' to spread a model larger than one GPU (accelerate)")
    parser.set_defaults(func=run)


def launched_by_torchrun() -> bool:
    """Return whether this process is one rank of several (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _rank_device(device: str) -> str:
    """Return this rank's device: a bare 'cuda' means the GPU of the rank's local index."""
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device == "cuda" else device


def run(args: argparse.Namespace) -> int:
    from moe_lib.core.trace_store import TraceStoreError, is_trace_store
    from moe_lib.core.traces import choose_batch_size, collect_trace
    from moe_lib.models.registry import load

    if args.out.exists():
        what = "a trace store" if is_trace_store(args.out) else "not a trace store"
        raise TraceStoreError(f"{args.out} already exists ({what}); nothing was overwritten")
    label_fields = [f for f in args.label_fields.split(",") if f]
    texts, labels = read_texts(args.texts, label_fields)
    sharded = launched_by_torchrun()
    device = _rank_device(args.device) if sharded else args.device
    model, tokenizer = load(
        args.model, revision=args.revision, device=device, dtype=args.dtype, device_map=args.device_map
    )
    batch_size = (
        choose_batch_size(model, args.max_length, predictions=args.predictions)
        if args.batch_size == "auto"
        else int(args.batch_size)
    )
    options = dict(
        labels=labels,
        max_length=args.max_length,
        batch_size=batch_size,
        router_logits=args.router_logits,
        predictions=args.predictions,
        chunk_tokens=args.chunk_tokens,
        store=args.out,
        # the name the user gave (registry name, hub id or folder), not the resolved local path
        attrs={"model": args.model, "dataset": args.texts.name, "revision": args.revision or ""},
    )
    if sharded:
        ds = _run_sharded(model, tokenizer, texts, options)
    else:
        ds = collect_trace(model, tokenizer, texts, **options)
    if not sharded or int(os.environ.get("RANK", "0")) == 0:
        print(f"{args.out}: {ds.sizes['token']} tokens, {ds.sizes['layer']} MoE layers, top-{ds.attrs['top_k']}")
    return 0


def _run_sharded(model, tokenizer, texts, options):
    """Trace as one rank of torchrun's process group (gloo: only small control messages
    pass between ranks, the traces go straight to the store)."""
    from datetime import timedelta

    import torch.distributed as dist

    from moe_lib.core.sharded import agree_on_min, collect_trace_sharded

    # Ranks wait for the slowest at the end: a day, not the default 30 minutes.
    dist.init_process_group("gloo", timeout=timedelta(days=1))
    try:
        options["batch_size"] = agree_on_min(options["batch_size"])  # 'auto' may differ per GPU
        return collect_trace_sharded(model, tokenizer, texts, **options)
    finally:
        dist.destroy_process_group()
