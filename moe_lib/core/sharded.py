"""Trace one store from several processes (torch.distributed, e.g. torchrun), as one would.

Each rank traces a contiguous share of the texts: whole batches of the one-process batch
grid, so every forward is one a single process would run and the store is bit-identical
to the one-process trace. Every rank counts its texts' tokens first, so rank r knows its
region ``token_bounds[r]:token_bounds[r + 1]`` of the store before any forward.

Concurrent writes into one Zarr chunk lose data (DESIGN.md, "Beyond one machine"), so a
rank writes only the chunks wholly inside its region. The parts of the chunks that
straddle two regions (at most one "seam" per rank boundary, and the store's short last
chunk) are kept as small fragment stores, and rank 0 writes those chunks once every rank
is done; then it seals the store (attrs, rename into place) as ``TraceWriter`` does.

Beside ``<store>.partial`` lives ``<store>.ranks/``: ``plan.json`` (world size, bounds,
settings), one progress record per rank and the fragments. A crashed run, relaunched the
same way, resumes every rank from its record: each reruns the batch holding its first
unwritten token and drops the tokens before it, so nothing is lost or written twice. A
partial begun with another world size is refused (its regions would not line up), and so
are ranks launched with different settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch.distributed as dist
import xarray as xr
import zarr
from tqdm.auto import tqdm

from moe_lib.core.schema import EXPERT, LAYER, SLOT, TOKEN, check_trace
from moe_lib.core.trace_store import (
    _VOLATILE_ATTRS,
    TraceStoreError,
    _encoding,
    build_dataset,
    is_trace_store,
    open_trace,
    partial_path,
    progress_path,
    ranks_path,
)
from moe_lib.core.traces import (
    check_texts,
    collect_trace,
    encode_batches,
    full_attrs,
    run_batches,
    text_lengths,
)


class ShardSettingsError(ValueError):
    """Ranks of one sharded trace were launched with different settings."""


def share_bounds(n_texts: int, batch_size: int, world_size: int) -> list[int]:
    """Return text bounds: rank r traces texts ``bounds[r]:bounds[r + 1]``.

    Shares are whole batches of the one-process grid (multiples of ``batch_size``), as even
    in batches as they can be; a rank may get none when there are fewer batches than ranks.
    """
    n_batches = -(-n_texts // batch_size)
    return [min(n_texts, (rank * n_batches // world_size) * batch_size) for rank in range(world_size + 1)]


def _texts_fingerprint(texts: Sequence[str], labels: dict, target_spans) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(json.dumps({k: [str(v) for v in vs] for k, vs in labels.items()}, sort_keys=True).encode())
    digest.update(json.dumps(target_spans, default=str).encode())
    return digest.hexdigest()


def check_same_settings(settings: dict, group=None) -> None:
    """Raise :class:`ShardSettingsError` on every rank unless all ranks hold equal ``settings``."""
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, settings, group=group)
    for rank, other in enumerate(gathered[1:], start=1):
        if other != gathered[0]:
            fields = sorted(k for k in other.keys() | gathered[0].keys() if other.get(k) != gathered[0].get(k))
            shown = "; ".join(f"{k}: rank 0 has {gathered[0].get(k)!r}, rank {rank} has {other.get(k)!r}"
                              for k in fields[:5])
            raise ShardSettingsError(
                f"ranks of one sharded trace were launched with different settings ({shown}); "
                "launch every rank with the same model, texts and options"
            )


def agree_on_min(value: int, group=None) -> int:
    """Return the smallest of every rank's ``value`` (e.g. batch sizes that fit each GPU)."""
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, int(value), group=group)
    return min(gathered)


@dataclass
class ShardPlan:
    """Who traces which texts into which tokens of the store; saved as ``plan.json``."""

    world_size: int
    chunk_tokens: int
    text_bounds: list[int]
    token_bounds: list[int]
    settings: dict

    def region(self, rank: int) -> tuple[int, int]:
        return self.token_bounds[rank], self.token_bounds[rank + 1]

    def parts(self, rank: int) -> tuple[int, int]:
        """Return (head_end, tail_start): tokens before head_end and from tail_start on
        belong to chunks shared with other ranks; those between fill whole chunks."""
        start, end = self.region(rank)
        size = self.chunk_tokens
        head_end = min(end, -(-start // size) * size)
        return head_end, max(head_end, end // size * size)


def _json_write(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _aligned_encoding(ds: xr.Dataset, chunk_tokens: int) -> dict:
    """Return ``_encoding`` with every token chunk a divisor of ``chunk_tokens``, so that a
    region of whole ``chunk_tokens`` chunks is whole chunks of every variable."""
    encoding = _encoding(ds, chunk_tokens)
    for spec in encoding.values():
        first = spec["chunks"][0]
        while chunk_tokens % first:
            first -= 1
        spec["chunks"] = (first, *spec["chunks"][1:])
    return encoding


def _region_write(ds: xr.Dataset, store: Path, start: int) -> None:
    """Write ``ds``'s token rows at ``start`` of ``store`` (the caller owns those chunks)."""
    ds = ds.drop_vars([name for name in (LAYER, SLOT, EXPERT) if name in ds.variables])
    ds.attrs = {}
    ds.to_zarr(store, region={TOKEN: slice(start, start + ds.sizes[TOKEN])}, mode="r+", consolidated=False)


class ShardWriter:
    """One rank's writer: its region's whole chunks into the store, the rest as fragments.

    Takes batches through ``add`` as :class:`~moe_lib.core.trace_store.TraceWriter` does.
    """

    def __init__(self, store: Path, plan: ShardPlan, rank: int, position: int, logits_dtype: str = "float16"):
        self.store, self.plan, self.rank = Path(store), plan, rank
        self.partial, self.ranks = partial_path(store), ranks_path(store)
        self.start, self.end = plan.region(rank)
        self.head_end, self.tail_start = plan.parts(rank)
        self.logits_dtype = np.dtype(logits_dtype)
        self.record = self.ranks / f"rank-{rank:05d}.json"
        done = json.loads(self.record.read_text())["n_tokens_done"] if self.record.is_file() else 0
        self.done = self.start + int(done)  # first token of the region not yet safely written
        self.position = position  # store index of the next token handed to ``add``
        self.n_texts_done = 0
        self._layers: list[int] | None = None
        self._pending: list[tuple[dict, dict]] = []
        self._n_pending = 0

    def fragment_path(self, part: str) -> Path:
        return self.ranks / f"rank-{self.rank:05d}-{part}.zarr"

    def add(self, layers: list[int], coords: dict, data: dict, n_texts_done: int) -> None:
        """Take one batch's (token, ...) arrays, dropping tokens already written."""
        self._layers, self.n_texts_done = layers, n_texts_done
        n_tokens = len(coords["seq"])
        skip = max(0, self.done + self._n_pending - self.position)
        self.position += n_tokens
        if skip >= n_tokens:
            return
        if "router_logits" in data:
            data = data | {"router_logits": data["router_logits"].astype(self.logits_dtype)}
        if skip:
            coords = {k: v[skip:] for k, v in coords.items()}
            data = {k: v[skip:] for k, v in data.items()}
        self._pending.append((coords, data))
        self._n_pending += n_tokens - skip
        self._drain()

    def _take(self, n_tokens: int) -> xr.Dataset:
        """Return the first ``n_tokens`` pending tokens as a Dataset, keeping the rest."""
        coords = {k: np.concatenate([c[k] for c, _ in self._pending]) for k in self._pending[0][0]}
        data = {k: np.concatenate([d[k] for _, d in self._pending]) for k in self._pending[0][1]}
        rest = ({k: v[n_tokens:] for k, v in coords.items()}, {k: v[n_tokens:] for k, v in data.items()})
        self._pending = [rest] if len(rest[0]["seq"]) else []
        self._n_pending -= n_tokens
        return build_dataset(self._layers, {k: v[:n_tokens] for k, v in coords.items()},
                             {k: v[:n_tokens] for k, v in data.items()}, {})

    def _drain(self) -> None:
        size = self.plan.chunk_tokens
        while self._n_pending:
            if self.done < self.head_end:  # the start of a chunk shared with the rank before
                if self._n_pending < self.head_end - self.done:
                    return
                self._save_fragment("head", self._take(self.head_end - self.done))
            elif self.done < self.tail_start:  # whole chunks: this rank's own
                n_chunks = min(self._n_pending // size, (self.tail_start - self.done) // size)
                if n_chunks == 0:
                    return
                _region_write(self._take(n_chunks * size), self.partial, self.done)
                self._advance(n_chunks * size)
            else:  # the end of a chunk shared with the rank after (or the store's last)
                if self._n_pending < self.end - self.done:
                    return
                self._save_fragment("tail", self._take(self.end - self.done))

    def _save_fragment(self, part: str, ds: xr.Dataset) -> None:
        path = self.fragment_path(part)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.to_zarr(tmp, mode="w-", consolidated=False)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
        self._advance(ds.sizes[TOKEN])

    def _advance(self, n_tokens: int) -> None:
        self.done += n_tokens
        _json_write(self.record, {"rank": self.rank, "n_tokens_done": self.done - self.start,
                                  "pid": os.getpid(), "host": socket.gethostname()})

    def finish(self) -> None:
        """Check that the whole region was written (the tokens counted were the tokens traced)."""
        if self.done != self.end or self._n_pending:
            raise TraceStoreError(
                f"{self.partial}: rank {self.rank} wrote tokens up to {self.done} of its region "
                f"{self.start}:{self.end} ({self._n_pending} left over): the texts tokenized "
                "differently while counting and while tracing"
            )


def _read_fragment(path: Path) -> xr.Dataset:
    """Return a fragment's arrays as written, with no encoding left to clash on rewrite."""
    # chunks=None: plain arrays, read at once (a Dask graph for a few small reads costs more)
    ds = xr.open_zarr(path, consolidated=False, mask_and_scale=False, chunks=None).load()
    for var in ds.variables.values():
        for name in ("_FillValue", "coordinates"):
            var.attrs.pop(name, None)
        var.encoding = {}
    return ds


def _write_seams(plan: ShardPlan, store: Path) -> None:
    """(rank 0) Write every chunk shared by ranks, from their fragments, in store order."""
    ranks, size = ranks_path(store), plan.chunk_tokens
    fragments = []
    for rank in range(plan.world_size):
        start, end = plan.region(rank)
        head_end, tail_start = plan.parts(rank)
        for part, first, last in (("head", start, head_end), ("tail", tail_start, end)):
            if last > first:
                fragments.append((first, last, ranks / f"rank-{rank:05d}-{part}.zarr"))
    by_chunk: dict[int, list] = {}
    for first, last, path in sorted(fragments):
        by_chunk.setdefault(first // size, []).append((first, last, path))
    for chunk, parts in by_chunk.items():
        expected = chunk * size
        for first, last, path in parts:
            if first != expected:
                raise TraceStoreError(f"{path}: a fragment of tokens {first}:{last} leaves a gap at {expected}")
            expected = last
        pieces = [_read_fragment(path) for _, _, path in parts]
        seam = xr.concat(pieces, dim=TOKEN) if len(pieces) > 1 else pieces[0]
        _region_write(seam, partial_path(store), chunk * size)


def _prepare(store: Path, plan: ShardPlan, template: xr.Dataset) -> str | None:
    """(rank 0) Check a partial write for a resume, or create the store from ``template`` (a
    one-text trace: the variables, dtypes and attrs); return an error."""
    partial, ranks = partial_path(store), ranks_path(store)
    if store.exists():
        what = "a trace store" if is_trace_store(store) else "not a trace store"
        return f"{store} already exists ({what}); nothing was overwritten"
    if progress_path(store).exists():
        return (f"{partial}: an interrupted one-process trace; resume it with one process, "
                "or delete it to start a sharded one")
    plan_file = ranks / "plan.json"
    if plan_file.is_file() and is_trace_store(partial):
        old = ShardPlan(**json.loads(plan_file.read_text()))
        if old.world_size != plan.world_size:
            return (f"{partial}: begun by {old.world_size} ranks, now launched with {plan.world_size}; "
                    f"relaunch with --nproc-per-node x --nnodes = {old.world_size} ranks to resume, or "
                    f"delete {partial} and {ranks} to start again")
        changed = sorted(k for k in old.settings.keys() | plan.settings.keys()
                         if old.settings.get(k) != plan.settings.get(k))
        if changed or old.token_bounds != plan.token_bounds:
            return (f"{partial}: an interrupted write with other settings ({', '.join(changed) or 'texts'}); "
                    f"delete {partial} and {ranks} to start again")
        return None
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted start: nothing usable yet
    shutil.rmtree(ranks, ignore_errors=True)
    ranks.mkdir(parents=True)
    template.to_zarr(partial, mode="w-", encoding=_aligned_encoding(template, plan.chunk_tokens),
                     consolidated=False)
    n_tokens = plan.token_bounds[-1]
    for _, array in zarr.open_group(partial, mode="r+").arrays():
        dims = array.metadata.dimension_names or ()
        if dims and dims[0] == TOKEN:
            array.resize((n_tokens, *array.shape[1:]))
    _json_write(plan_file, asdict(plan))  # last: a plan means the store is ready for regions
    return None


def collect_trace_sharded(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    store: str | Path,
    labels: dict[str, Sequence] | None = None,
    target_spans=None,
    max_length: int = 256,
    batch_size: int = 8,
    router_logits: bool = False,
    predictions: bool = False,
    logits_dtype: str = "float16",
    add_special_tokens: bool = True,
    chunk_tokens: int = 32768,
    attrs: dict | None = None,
    progress: bool = True,
    group=None,
) -> xr.Dataset:
    """Return the routing trace of ``texts``, traced by every rank of ``group`` into ``store``.

    Call it on every rank of an initialised process group (``torchrun`` sets one up; the
    ``trace`` command does this when launched by torchrun), each with its model on its own
    device and the same arguments. Parameters are :func:`~moe_lib.core.traces.collect_trace`'s;
    ``store`` is required. The result equals the one-process trace: the same tokens in the
    same order, identical ids and weights (see the module docstring for how).

    Raises
    ------
    ShardSettingsError
        When the ranks were given different texts, model attrs or options.
    TraceStoreError
        When ``store`` exists, or a partial write of it was begun with another world size
        or other settings.
    """
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    store = Path(store)
    texts, labels = check_texts(texts, labels, target_spans)
    all_attrs = full_attrs(model, router_logits, predictions, max_length, attrs)
    settings = {
        **{k: v for k, v in all_attrs.items() if k not in _VOLATILE_ATTRS},
        "n_texts": len(texts), "texts_sha256": _texts_fingerprint(texts, labels, target_spans),
        "batch_size": batch_size, "chunk_tokens": chunk_tokens, "router_logits": router_logits,
        "predictions": predictions, "logits_dtype": logits_dtype, "add_special_tokens": add_special_tokens,
        "store": str(store),
    }
    check_same_settings(settings, group)

    text_bounds = share_bounds(len(texts), batch_size, world_size)
    first, last = text_bounds[rank], text_bounds[rank + 1]
    lengths = text_lengths(tokenizer, texts[first:last], max_length, add_special_tokens)
    totals: list = [None] * world_size
    dist.all_gather_object(totals, int(lengths.sum()), group=group)
    if sum(totals) == 0:
        raise ValueError("no text has any token to trace")
    plan = ShardPlan(world_size, chunk_tokens, text_bounds, [0, *np.cumsum(totals).tolist()], settings)

    def probe() -> xr.Dataset:  # a one-text trace: the store's variables, dtypes and attrs
        index = next(i for i, text in enumerate(texts) if tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        ds = collect_trace(
            model, tokenizer, texts[index:index + 1], labels={k: v[index:index + 1] for k, v in labels.items()},
            target_spans=None if target_spans is None else target_spans[index:index + 1],
            max_length=max_length, router_logits=router_logits, predictions=predictions,
            logits_dtype=logits_dtype, add_special_tokens=add_special_tokens, progress=False,
        )
        if "router_logits" in ds:
            ds["router_logits"] = ds["router_logits"].astype(logits_dtype)
        ds.attrs = all_attrs
        return ds

    # Every rank traces the probe text, not rank 0 alone: it is each model's first forward
    # (slow: lazy set-up), so the other ranks warm up instead of waiting for rank 0's.
    template = probe()
    verdict = [_prepare(store, plan, template) if rank == 0 else None]
    dist.broadcast_object_list(verdict, src=0, group=group)
    if verdict[0] is not None:
        raise TraceStoreError(verdict[0])

    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    writer = ShardWriter(store, plan, rank, position=0, logits_dtype=logits_dtype)
    done = writer.done - writer.start
    # Rerun from the batch (of the one-process grid) holding the first unwritten token.
    resume = first + (int(np.searchsorted(cumulative, done, side="right")) - 1) // batch_size * batch_size
    resume = min(resume, last)
    writer.position = writer.start + int(cumulative[resume - first])
    on_cuda = next(model.parameters()).device.type == "cuda"
    batches = encode_batches(
        tokenizer, texts, batch_size, resume, last, labels=labels, target_spans=target_spans,
        max_length=max_length, add_special_tokens=add_special_tokens, pin_memory=on_cuda,
    )
    with tqdm(total=last - first, initial=resume - first, unit="text", desc=f"trace rank {rank}/{world_size}",
              disable=not progress or rank != 0) as bar:
        run_batches(model, batches, writer, router_logits=router_logits, predictions=predictions, bar=bar)
    writer.finish()

    dist.barrier(group=group)  # every region written
    if rank == 0:
        _write_seams(plan, store)
        group_attrs = zarr.open_group(partial_path(store), mode="r+").attrs
        group_attrs.update(all_attrs | {"n_texts": len(texts), "n_tokens": plan.token_bounds[-1]})
        os.rename(partial_path(store), store)
        shutil.rmtree(ranks_path(store))
    dist.barrier(group=group)
    return check_trace(open_trace(store))
