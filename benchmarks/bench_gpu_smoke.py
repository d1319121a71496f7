"""GPU smoke test: trace a small MoE on the GPU, report tokens/s, check the capture.

Builds the OLMoE-shaped model of bench_capture.py (random weights, no download; or loads
MODEL given with --model, e.g. a hub id on a machine with hub access), traces real text in
bf16 on the GPU into a temporary Zarr store, and reports:
  - tokens/s of the plain forward and of the full trace, and their ratio;
  - the share of (token, layer, slot) expert ids equal to an fp32 run of the same model
    (bf16 and fp32 may differ on near-ties; expect well above 0.9);
  - that the hooked and unhooked logits are identical on the GPU.
Exits non-zero if no CUDA device is present or a check fails.

Run: python benchmarks/bench_gpu_smoke.py [--model NAME] [--texts 1024] [--batch-size auto]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_capture import olmoe_shaped, sample_texts

from moe_lib.core.capture import capture
from moe_lib.core.traces import choose_batch_size, collect_trace
from moe_lib.models.tiny import tiny_tokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="registry name, hub id or folder (default: a random OLMoE-shaped model)")
    parser.add_argument("--texts", type=int, default=1024, help="texts of about 256 tokens to trace")
    parser.add_argument("--batch-size", default="auto", help="texts per forward, or 'auto'")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    if args.model:
        from moe_lib.models.registry import load

        model, tokenizer = load(args.model, device="cuda")
    else:
        model = olmoe_shaped(8, "cuda").to(torch.bfloat16)
        tokenizer = tiny_tokenizer(sample_texts(64), vocab_size=8192)
    texts = sample_texts(args.texts)
    batch_size = choose_batch_size(model, 256) if args.batch_size == "auto" else int(args.batch_size)
    enc = tokenizer(texts[:batch_size], truncation=True, max_length=256, padding=True, return_tensors="pt")
    batch = {k: enc[k].cuda() for k in ("input_ids", "attention_mask")}

    with torch.inference_mode():
        plain_logits = model(**batch).logits
        with capture(model) as cap:
            hooked_logits = model(**batch).logits
            cap.pop()
        identical = torch.equal(plain_logits, hooked_logits)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            model(**batch)
        torch.cuda.synchronize()
        plain_tps = 5 * int(batch["attention_mask"].sum()) / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        # The first trace of a process pays one-time costs (imports, store and codec set-up,
        # about half a second): trace one batch first so they stay out of the rate.
        collect_trace(model, tokenizer, texts[:batch_size], batch_size=batch_size,
                      store=Path(tmp) / "warm-up.zarr", progress=False)
        start = time.perf_counter()
        ds = collect_trace(model, tokenizer, texts, batch_size=batch_size, store=Path(tmp) / "t.zarr")
        trace_tps = ds.sizes["token"] / (time.perf_counter() - start)
        gpu_ids = ds.expert_id.values
    reference = collect_trace(model.float(), tokenizer, texts, batch_size=batch_size, progress=False)
    agreement = float((reference.expert_id.values == gpu_ids).mean())

    print(f"{torch.cuda.get_device_name()}: batch {batch_size}, {ds.sizes['token']} tokens traced")
    print(f"  plain forward {plain_tps:10.0f} tokens/s; trace into Zarr {trace_tps:10.0f} tokens/s; "
          f"ratio {trace_tps / plain_tps:.3f}")
    print(f"  hooked logits identical to plain: {identical}")
    print(f"  expert ids equal to the fp32 run: {agreement:.4f}")
    return 0 if identical and agreement > 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
