"""Collect a routing trace over a list of texts, batch by batch, optionally straight to Zarr.

Texts are tokenized without padding and padded on the right here, so positions are the
model's own and padding never reaches the trace. Captured arrays are buffered until about
``chunk_tokens`` tokens are waiting, then appended to the store: memory stays bounded by
the buffer, however many texts are traced.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, closing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from moe_lib.core.capture import RoutingCapture
from moe_lib.core.pipeline import BackgroundSink, prefetch
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


@dataclass
class EncodedBatch:
    """Texts ``first:last`` tokenized, padded on the right, with their token coordinates."""

    first: int
    last: int
    input_ids: torch.Tensor  # (batch, width) long, 0 after each text's end
    attention_mask: torch.Tensor  # (batch, width) long, 1 on real tokens
    coords: dict[str, np.ndarray]  # (token,) each, padding dropped: seq, pos, token_id, ...

    @property
    def n_tokens(self) -> int:
        return len(self.coords["seq"])


def encode_batches(
    tokenizer,
    texts: Sequence[str],
    batch_size: int,
    start: int,
    stop: int | None = None,
    *,
    labels: dict[str, list] | None = None,
    target_spans=None,
    max_length: int = 256,
    add_special_tokens: bool = True,
    pin_memory: bool = False,
):
    """Yield an :class:`EncodedBatch` for texts ``start:stop`` in batches of ``batch_size``.

    Batches are cut on the grid of multiples of ``batch_size`` from ``start``, so a resumed
    or sharded trace starting on that grid runs exactly the batches of a one-process one
    (and so gets bit-identical results). ``pin_memory`` (CUDA only) lets the copy to the
    device run without blocking.
    """
    stop = len(texts) if stop is None else stop
    memo: dict[int, str] = {}  # token strings, decoded once per id on this thread only
    for first, last in _batches(stop, batch_size, start):
        enc = tokenizer(
            list(texts[first:last]),
            truncation=True,
            max_length=max_length,
            add_special_tokens=add_special_tokens,
            return_offsets_mapping=target_spans is not None,
        )
        lengths = [len(ids) for ids in enc["input_ids"]]
        width = max(lengths)
        input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
        mask = torch.zeros(len(lengths), width, dtype=torch.long)
        for row, ids in enumerate(enc["input_ids"]):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        token_ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in enc["input_ids"]])
        coords = {
            "seq": np.repeat(np.arange(first, last), lengths),
            "pos": np.concatenate([np.arange(n) for n in lengths]),
            "token_id": token_ids.astype(np.int32),
            "token_str": token_strings(tokenizer, token_ids, memo),
        }
        for name, values in (labels or {}).items():
            coords[name] = np.repeat(np.asarray(values[first:last]), lengths)
        if target_spans is not None:
            coords["is_target"] = np.concatenate(
                [_spans_to_mask(enc["offset_mapping"][row], target_spans[first + row]) for row in range(len(lengths))]
            )
        if pin_memory:
            input_ids, mask = input_ids.pin_memory(), mask.pin_memory()
        yield EncodedBatch(first, last, input_ids, mask, coords)


def text_lengths(tokenizer, texts: Sequence[str], max_length: int, add_special_tokens: bool = True) -> np.ndarray:
    """Return how many tokens each text keeps after truncation (int64, text,)."""
    lengths = np.zeros(len(texts), dtype=np.int64)
    for first in range(0, len(texts), 1024):  # blocks keep the encodings' memory small
        enc = tokenizer(list(texts[first:first + 1024]), truncation=True, max_length=max_length,
                        add_special_tokens=add_special_tokens)
        lengths[first:first + len(enc["input_ids"])] = [len(ids) for ids in enc["input_ids"]]
    return lengths


def run_batches(model, batches, writer, *, router_logits: bool, predictions: bool, bar) -> None:
    """Run ``model`` on each :class:`EncodedBatch` and hand its routing to ``writer.add``.

    The forward runs on the caller's thread; the batches come from a tokenizing thread
    ahead of it and the writes happen on a writer thread behind it (``moe_lib.core.pipeline``).
    On CUDA the routing leaves the device by non-blocking copies into pinned memory.
    """
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    forward_kwargs = _forward_kwargs(model, predictions)

    def write(item) -> None:
        batch, record, predicted = item
        if record is None:  # only empty texts: nothing to route, but they count as done
            writer.n_texts_done = batch.last
            bar.update(batch.last - batch.first)
            return
        record.wait()
        keep = batch.attention_mask.flatten().numpy().astype(bool)
        data = {"expert_id": record.expert_id[keep], "weight": record.weight[keep]}
        if record.router_logits is not None:
            data["router_logits"] = record.router_logits[keep]
        if record.shared_gate is not None:
            data["shared_gate"] = record.shared_gate[keep]
        if predicted is not None:
            data["predicted_id"] = predicted[keep].astype(np.int32)
        writer.add(record.layers, batch.coords, data, n_texts_done=batch.last)
        bar.update(batch.last - batch.first)

    with (
        RoutingCapture(model, router_logits=router_logits) as cap,
        torch.inference_mode(),
        BackgroundSink(write, depth=4, name="trace-writer") as sink,
        ExitStack() as stack,  # closes the tokenizing thread first, also on an error
    ):
        ahead = stack.enter_context(closing(prefetch(batches, depth=2, name="trace-tokenizer")))
        for batch in ahead:
            if batch.n_tokens == 0:
                sink.put((batch, None, None))
                continue
            output = model(
                input_ids=batch.input_ids.to(device, non_blocking=on_cuda),
                attention_mask=batch.attention_mask.to(device, non_blocking=on_cuda),
                **forward_kwargs,
            )
            record = cap.pop(non_blocking=on_cuda)
            predicted = None
            if predictions:
                argmax = output.logits.argmax(dim=-1).flatten()
                predicted = argmax.to("cpu", non_blocking=on_cuda).numpy()
                if on_cuda:  # the record's event is recorded after this copy was queued
                    record.ready = torch.cuda.Event()
                    record.ready.record()
            sink.put((batch, record, predicted))


def check_texts(texts, labels, target_spans) -> tuple[list[str], dict[str, list]]:
    """Return the texts and labels as lists, after checking that their lengths agree."""
    texts = list(texts)
    labels = {name: list(values) for name, values in (labels or {}).items()}
    for name, values in labels.items():
        if len(values) != len(texts):
            raise ValueError(f"label {name!r} has {len(values)} values for {len(texts)} texts")
    if target_spans is not None and len(target_spans) != len(texts):
        raise ValueError(f"target_spans has {len(target_spans)} entries for {len(texts)} texts")
    if not texts:
        raise ValueError("no texts to trace")
    return texts, labels


def full_attrs(model, router_logits: bool, predictions: bool, max_length: int, attrs: dict | None) -> dict:
    """Return every attr of a trace: provenance, settings, the caller's, creation time."""
    all_attrs = {**trace_attrs(model, router_logits), "max_length": max_length, **(attrs or {})}
    if predictions:  # the schema checks predicted ids against it
        all_attrs["vocab_size"] = vocab_size(model)
    all_attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return all_attrs


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

    Notes
    -----
    Tokenizing runs a few batches ahead and writing a few behind the forward, on threads
    (``moe_lib.core.pipeline``). Launched by ``torchrun``, the ``trace`` command shards the
    texts over processes instead: see ``moe_lib.core.sharded``.
    """
    texts, labels = check_texts(texts, labels, target_spans)
    all_attrs = full_attrs(model, router_logits, predictions, max_length, attrs)
    writer = TraceWriter(store, all_attrs, chunk_tokens=chunk_tokens, logits_dtype=logits_dtype)
    start = writer.n_texts_done
    on_cuda = next(model.parameters()).device.type == "cuda"
    batches = encode_batches(
        tokenizer, texts, batch_size, start, labels=labels, target_spans=target_spans,
        max_length=max_length, add_special_tokens=add_special_tokens, pin_memory=on_cuda,
    )
    with tqdm(total=len(texts), initial=start, desc="trace", unit="text", disable=not progress) as bar:
        run_batches(model, batches, writer, router_logits=router_logits, predictions=predictions, bar=bar)
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
