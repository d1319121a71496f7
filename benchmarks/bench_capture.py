"""Capture and trace cost on an OLMoE-shaped model, as ratios measured in one run.

Measures, on one machine in one process (interleaved repetitions, medians):
  1. capture overhead: a forward inside ``capture`` (ids and weights, then ``pop``) over
     the plain forward;
  2. end-to-end tracing into Zarr (tokenize, forward, capture, write) in tokens/s over the
     plain forward's tokens/s;
  3. peak memory of tracing N texts against 10 N texts, each in a fresh subprocess.

Run: python benchmarks/bench_capture.py [--layers 8] [--repeats 7] [--device cpu]
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

import torch
import transformers

from moe_lib.core.capture import capture
from moe_lib.core.traces import collect_trace
from moe_lib.models.tiny import tiny_tokenizer
from rss import peak_rss_mib


def olmoe_shaped(n_layers: int, device: str):
    """Return the issue's benchmark model: hidden 256, 16 experts, top-4, random weights."""
    config = transformers.OlmoeConfig(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=n_layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        num_experts=16,
        num_experts_per_tok=4,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).to(device).eval()


def sample_texts(n_texts: int) -> list[str]:
    """Real text of about 256 tokens each: the standard library's own module sources."""
    import inspect
    import json as json_module
    import textwrap

    source = "".join(inspect.getsource(m) for m in (json_module.decoder, textwrap, inspect))
    width = 1200  # characters: about 256 tokens of a byte-level BPE
    return [source[(i * width) % (len(source) - width) :][:width] for i in range(n_texts)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_forwards(model, batch, repeats: int, device: str) -> dict[str, float]:
    """Return median seconds of plain and captured forwards, interleaved."""
    times = {"plain": [], "capture": [], "capture_logits": []}
    with torch.inference_mode():
        model(**batch)  # warm-up
        for _ in range(repeats):
            for name in times:
                _sync(device)
                start = time.perf_counter()
                if name == "plain":
                    model(**batch)
                else:
                    with capture(model, router_logits=name == "capture_logits") as cap:
                        model(**batch)
                        cap.pop()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_child(n_texts: int, n_layers: int) -> None:
    """(subprocess) trace n_texts into a temporary store; print peak RSS in MiB as JSON."""
    model = olmoe_shaped(n_layers, "cpu")
    tokenizer = tiny_tokenizer(sample_texts(64), vocab_size=8192)
    with tempfile.TemporaryDirectory() as tmp:
        collect_trace(
            model, tokenizer, sample_texts(n_texts), batch_size=8, store=Path(tmp) / "t.zarr", progress=False
        )
    print(json.dumps({"n_texts": n_texts, "peak_mib": peak_rss_mib()}))


def peak_memory(n_texts: int, n_layers: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n_texts), "--layers", str(n_layers)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (the issue says 4 to 8)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repetitions per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texts", type=int, default=64, help="texts traced end to end (x 256 tokens)")
    parser.add_argument("--memory-texts", type=int, default=64, help="N of the N vs 10 N memory check")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child, args.layers)
        return

    model = olmoe_shaped(args.layers, args.device)
    tokenizer = tiny_tokenizer(sample_texts(64), vocab_size=8192)
    texts = sample_texts(args.texts)
    enc = tokenizer(texts[:8], truncation=True, max_length=256, padding="max_length", return_tensors="pt")
    batch = {k: v.to(args.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    n_batch_tokens = int(batch["attention_mask"].sum())
    forward = time_forwards(model, batch, args.repeats, args.device)
    print(f"batch 8 x 256 ({n_batch_tokens} tokens), {args.layers} layers, 16 experts, top-4, {args.device}")
    print(f"  plain forward          {forward['plain'] * 1e3:8.1f} ms")
    print(f"  + capture ids/weights  {forward['capture'] * 1e3:8.1f} ms  ratio {forward['capture'] / forward['plain']:.3f}")
    print(
        f"  + router logits too    {forward['capture_logits'] * 1e3:8.1f} ms  "
        f"ratio {forward['capture_logits'] / forward['plain']:.3f}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ds = collect_trace(model, tokenizer, texts, batch_size=8, store=Path(tmp) / "t.zarr", progress=False)
        n_tokens = ds.sizes["token"]
        trace_seconds = time.perf_counter() - start
    trace_tps = n_tokens / trace_seconds
    plain_tps = n_batch_tokens / forward["plain"]
    print(f"  trace into Zarr        {trace_tps:8.0f} tokens/s vs plain forward {plain_tps:8.0f} tokens/s"
          f"  ratio {trace_tps / plain_tps:.3f}")

    small = peak_memory(args.memory_texts, args.layers)
    large = peak_memory(10 * args.memory_texts, args.layers)
    print(f"  peak RSS tracing {args.memory_texts} texts {small:7.0f} MiB, "
          f"{10 * args.memory_texts} texts {large:7.0f} MiB  (+{100 * (large / small - 1):.1f}%)")


if __name__ == "__main__":
    main()
