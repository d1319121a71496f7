"""Collect a routing trace over a list of texts, batch by batch, optionally straight to Zarr.

Texts are tokenized without padding and padded on the right here, so positions are the
model's own and padding never reaches the trace. Captured arrays are buffered until about
``chunk_tokens`` tokens are waiting, then appended to the store: memory stays bounded by
the buffer, however many texts are traced.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from moe_lib.core.capture import RoutingCapture
from moe_lib.core.schema import EXPERT, LAYER, SCHEMA_VERSION, SLOT, TOKEN, check_trace
from moe_lib.core.trace_store import TraceWriter, open_trace
from moe_lib.models.families import norm_topk_prob, routed_scaling


def token_strings(tokenizer, ids: np.ndarray, memo: dict[int, str]) -> np.ndarray:
    """Return each token id's text as the tokenizer decodes it alone (object array)."""
    for token_id in np.unique(ids):
        if int(token_id) not in memo:
            memo[int(token_id)] = tokenizer.decode([int(token_id)])
    return np.array([memo[int(i)] for i in ids], dtype=object)


def _spans_to_mask(offsets: list[tuple[int, int]], spans: Sequence[Sequence[int]]) -> np.ndarray:
    """Return a bool per token: does the token overlap one of the character ``spans``?"""
    mask = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        for i, (tok_start, tok_end) in enumerate(offsets):
            if tok_end > tok_start and tok_start < end and tok_end > start:
                mask[i] = True
    return mask


def trace_attrs(model, router_logits: bool) -> dict:
    """Return the provenance attrs of a trace of ``model`` (JSON-native values only)."""
    import transformers

    from moe_lib import __version__

    cap = RoutingCapture(model, router_logits=router_logits)
    config = model.config
    return {
        "model": str(getattr(config, "_name_or_path", "") or config.model_type),
        "family": cap.family.model_type,
        "scoring": cap.family.scoring,
        "top_k": cap.top_k,
        "n_experts": cap.n_experts,
        "norm_topk_prob": norm_topk_prob(config, cap.family),
        "routed_scaling_factor": routed_scaling(config, cap.family),
        "n_layers_total": int(config.num_hidden_layers),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "moe_lib_version": __version__,
        "schema_version": SCHEMA_VERSION,
    }


def _batches(n_items: int, batch_size: int, start: int):
    for first in range(start, n_items, batch_size):
        yield first, min(first + batch_size, n_items)


def _forward_kwargs(model, predictions: bool = False) -> dict:
    """Ask for the last position's logits only where the model allows and only when routing
    is all we keep: predictions need the logits of every position."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in accepted and not predictions else {}


def vocab_size(model) -> int:
    """Return the width of ``model``'s next-token logits (its LM head's outputs)."""
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "out_features"):
        return int(head.out_features)
    return int(model.config.vocab_size)


def collect_trace(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    labels: dict[str, Sequence] | None = None,
    target_spans: Sequence[Sequence[Sequence[int]]] | None = None,
    max_length: int = 256,
    batch_size: int = 8,
    router_logits: bool = False,
    predictions: bool = False,
    logits_dtype: str = "float16",
    add_special_tokens: bool = True,
    store: str | Path | None = None,
    chunk_tokens: int = 32768,
    attrs: dict | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Return the routing trace of ``model`` on ``texts`` as a schema Dataset.

    Parameters
    ----------
    model, tokenizer : a transformers MoE causal LM of a supported family and its tokenizer.
    texts : one string per sequence; each is truncated to ``max_length`` tokens.
    labels : per-text values (e.g. ``{"domain": [...]}``) stored as token coordinates.
    target_spans : per text, ``(start, end)`` character spans of the target word; tokens
        overlapping a span get ``is_target=True`` (from the tokenizer's offsets, never by
        searching decoded strings). Needs a fast tokenizer.
    router_logits : also store raw ``router_logits(token, layer, expert)`` in ``logits_dtype``.
    predictions : also store ``predicted_id(token)``, the argmax of the model's next-token
        logits at each position, from the same forward pass (the LM head then runs on every
        position, not only the last, which costs a (batch, length, vocab) logits tensor).
    store : write to this Zarr path chunk by chunk (resuming an interrupted write there)
        and return the opened store; None keeps everything in memory.
    chunk_tokens : tokens buffered before each write, and the Zarr chunk length.
    attrs : provenance added to the trace's attrs (dataset name, fingerprint, ...).
    """
    texts = list(texts)
    labels = {name: list(values) for name, values in (labels or {}).items()}
    for name, values in labels.items():
        if len(values) != len(texts):
            raise ValueError(f"label {name!r} has {len(values)} values for {len(texts)} texts")
    if target_spans is not None and len(target_spans) != len(texts):
        raise ValueError(f"target_spans has {len(target_spans)} entries for {len(texts)} texts")
    if not texts:
        raise ValueError("no texts to trace")

    all_attrs = {**trace_attrs(model, router_logits), "max_length": max_length, **(attrs or {})}
    if predictions:  # the schema checks predicted ids against it
        all_attrs["vocab_size"] = vocab_size(model)
    all_attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    writer = TraceWriter(store, all_attrs, chunk_tokens=chunk_tokens, logits_dtype=logits_dtype)
    start = writer.n_texts_done
    device = next(model.parameters()).device
    forward_kwargs = _forward_kwargs(model, predictions)
    memo: dict[int, str] = {}

    bar = tqdm(total=len(texts), initial=start, desc="trace", unit="text", disable=not progress)
    with RoutingCapture(model, router_logits=router_logits) as cap, torch.inference_mode():
        for first, last in _batches(len(texts), batch_size, start):
            enc = tokenizer(
                texts[first:last],
                truncation=True,
                max_length=max_length,
                add_special_tokens=add_special_tokens,
                return_offsets_mapping=target_spans is not None,
            )
            lengths = [len(ids) for ids in enc["input_ids"]]
            width = max(lengths)
            if width == 0:  # only empty texts: they have no tokens to route
                writer.n_texts_done = last
                bar.update(last - first)
                continue
            input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
            mask = torch.zeros(len(lengths), width, dtype=torch.long)
            for row, ids in enumerate(enc["input_ids"]):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            output = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), **forward_kwargs)
            record = cap.pop()

            keep = mask.flatten().numpy().astype(bool)
            seqs = np.arange(first, last)
            token_ids = input_ids.flatten().numpy()[keep]
            coords = {
                "seq": np.repeat(seqs, lengths),
                "pos": np.concatenate([np.arange(n) for n in lengths]),
                "token_id": token_ids.astype(np.int32),
                "token_str": token_strings(tokenizer, token_ids, memo),
            }
            for name, values in labels.items():
                coords[name] = np.repeat(np.asarray(values[first:last]), lengths)
            if target_spans is not None:
                coords["is_target"] = np.concatenate(
                    [
                        _spans_to_mask(enc["offset_mapping"][row], target_spans[first + row])
                        for row in range(len(lengths))
                    ]
                )
            data = {"expert_id": record.expert_id[keep], "weight": record.weight[keep]}
            if record.router_logits is not None:
                data["router_logits"] = record.router_logits[keep]
            if record.shared_gate is not None:
                data["shared_gate"] = record.shared_gate[keep]
            if predictions:
                predicted = output.logits.argmax(dim=-1).flatten().cpu().numpy()
                data["predicted_id"] = predicted[keep].astype(np.int32)
            writer.add(record.layers, coords, data, n_texts_done=last)
            bar.update(last - first)
    bar.close()
    return check_trace(writer.finish())


def choose_batch_size(model, max_length: int, start: int = 64, predictions: bool = False) -> int:
    """Return the largest batch (halving from ``start``) whose forward fits in GPU memory.

    On the CPU memory is rarely the limit and larger batches do not run faster: 8.
    ``predictions`` sizes the batch for the logits of every position, as
    ``collect_trace(predictions=True)`` computes them.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 8
    batch_size = start
    while batch_size > 1:
        try:
            with torch.inference_mode():
                ids = torch.zeros(batch_size, max_length, dtype=torch.long, device=device)
                model(input_ids=ids, **_forward_kwargs(model, predictions))
            return batch_size
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch_size //= 2
    return 1
