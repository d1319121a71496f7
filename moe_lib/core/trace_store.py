"""Write routing traces to Zarr chunk by chunk, atomically and resumably; open them back.

A store is written at ``<path>.partial`` and renamed to ``<path>`` only once complete, so
a store at its final path is always whole. Beside it, ``<path>.progress.json`` records how
many texts and tokens are safely written (outside the store, where Zarr would warn about a
foreign file); an interrupted write resumes from there, first
cutting off anything written after the last record, so no token is lost or duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from moe_lib.core.schema import (
    EXPERT,
    EXPERT_ID_FILL,
    LAYER,
    PREDICTED_ID_DTYPE,
    SLOT,
    TOKEN,
    check_trace,
)

# Attrs that legitimately differ between the start of a write and its resumption.
_VOLATILE_ATTRS = {"created", "n_texts", "n_tokens"}


class TraceStoreError(RuntimeError):
    """A path that cannot be written or read as a trace store, with the reason."""


def partial_path(path: str | Path) -> Path:
    """Return where an unfinished write of the store ``path`` lives."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def progress_path(path: str | Path) -> Path:
    """Return where the progress record of an unfinished write of ``path`` lives."""
    path = Path(path)
    return path.with_name(path.name + ".progress.json")


def ranks_path(path: str | Path) -> Path:
    """Return where a sharded write of ``path`` keeps its plan, progress and fragments
    (``moe_lib.core.sharded``)."""
    path = Path(path)
    return path.with_name(path.name + ".ranks")


def is_trace_store(path: str | Path) -> bool:
    """Return whether ``path`` holds a Zarr group with an ``expert_id`` array."""
    return (Path(path) / "zarr.json").is_file() and (Path(path) / "expert_id" / "zarr.json").is_file()


def open_trace(path: str | Path, chunks: dict | None = None) -> xr.Dataset:
    """Return the trace at ``path`` (lazily, dask-backed), checked against the schema."""
    path = Path(path)
    if not path.exists():
        raise TraceStoreError(f"{path}: no such trace store")
    if not is_trace_store(path):
        raise TraceStoreError(f"{path}: not a routing trace (no Zarr group with expert_id)")
    # mask_and_scale=False: a declared fill value would turn int16 expert ids into floats
    ds = xr.open_zarr(
        path, consolidated=False, chunks=chunks if chunks is not None else {}, mask_and_scale=False
    )
    for var in ds.variables.values():  # a fill value is encoding, not an attribute
        if "_FillValue" in var.attrs:
            var.encoding["_FillValue"] = var.attrs.pop("_FillValue")
    return check_trace(ds, where=str(path))


def _as_strings(values) -> np.ndarray:
    """Return an object array of str: variable-length in Zarr, unlike numpy '<U'."""
    array = np.asarray(values)
    return array.astype(object) if array.dtype.kind in "UO" else array


def build_dataset(layers: list[int], coords: dict, data: dict, attrs: dict) -> xr.Dataset:
    """Return a schema Dataset from (token, ...) arrays; the one constructor of traces."""
    k = data["expert_id"].shape[-1]
    variables = {
        "expert_id": ((TOKEN, LAYER, SLOT), data["expert_id"]),
        "weight": ((TOKEN, LAYER, SLOT), data["weight"].astype(np.float32)),
    }
    if "router_logits" in data:
        variables["router_logits"] = ((TOKEN, LAYER, EXPERT), data["router_logits"])
    if "shared_gate" in data:
        variables["shared_gate"] = ((TOKEN, LAYER), data["shared_gate"].astype(np.float32))
    if "predicted_id" in data:
        variables["predicted_id"] = ((TOKEN,), data["predicted_id"].astype(PREDICTED_ID_DTYPE))
    all_coords = {LAYER: np.asarray(layers, dtype=np.int32), SLOT: np.arange(k, dtype=np.int32)}
    if "router_logits" in data:
        all_coords[EXPERT] = np.arange(data["router_logits"].shape[-1], dtype=np.int32)
    all_coords |= {name: (TOKEN, _as_strings(values)) for name, values in coords.items()}
    return xr.Dataset(variables, coords=all_coords, attrs=attrs)


def _encoding(ds: xr.Dataset, chunk_tokens: int) -> dict:
    """Return the Zarr encoding: chunks along token, and fill values that mask nothing real."""
    encoding = {}
    for name, var in ds.variables.items():
        if TOKEN not in var.dims:
            continue
        chunks = tuple(chunk_tokens if d == TOKEN else ds.sizes[d] for d in var.dims)
        if EXPERT in var.dims:  # (token, layer, expert) is wide: keep chunks near 8 MB
            chunks = (max(1, min(chunk_tokens, 2**22 // (ds.sizes[LAYER] * ds.sizes[EXPERT]))),) + chunks[1:]
        encoding[name] = {"chunks": chunks}
    encoding["expert_id"]["_FillValue"] = EXPERT_ID_FILL  # never 0: that is expert 0
    return encoding


class TraceWriter:
    """Accumulate a trace batch by batch, in memory or into a Zarr store; see module doc."""

    def __init__(self, store, attrs: dict, chunk_tokens: int = 32768, logits_dtype: str = "float16"):
        self.attrs = dict(attrs)
        self.chunk_tokens = chunk_tokens
        self.logits_dtype = np.dtype(logits_dtype)
        self.store = None if store is None else Path(store)
        self._pending: list[tuple[dict, dict]] = []
        self._kept: list[xr.Dataset] = []  # in-memory mode only
        self._layers: list[int] | None = None
        self.n_texts_done = 0
        self.n_tokens_written = 0
        if self.store is not None:
            self._prepare_store()

    # -- store life cycle -------------------------------------------------------------------
    def _prepare_store(self) -> None:
        if self.store.exists():
            what = "a trace store" if is_trace_store(self.store) else "not a trace store"
            raise TraceStoreError(f"{self.store} already exists ({what}); nothing was overwritten")
        partial, progress = partial_path(self.store), progress_path(self.store)
        if ranks_path(self.store).exists():
            raise TraceStoreError(
                f"{partial}: an interrupted sharded trace (see {ranks_path(self.store)}); resume it with "
                "torchrun and the same number of ranks, or delete both to start again"
            )
        if partial.exists() and progress.is_file() and is_trace_store(partial):
            self._resume(partial, json.loads(progress.read_text()))
        elif partial.exists():
            shutil.rmtree(partial)  # an interrupted first write: nothing usable yet

    def _resume(self, partial: Path, progress: dict) -> None:
        group = zarr.open_group(partial, mode="r+")
        old = {k: v for k, v in group.attrs.asdict().items() if k not in _VOLATILE_ATTRS}
        new = {k: v for k, v in self.attrs.items() if k not in _VOLATILE_ATTRS}
        if old != new:
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise TraceStoreError(
                f"{partial}: an interrupted write with other settings ({', '.join(changed)}); "
                "delete it to start again"
            )
        n_tokens = int(progress["n_tokens"])
        # cut whatever an interrupted append wrote after the last progress record
        for name, array in group.arrays():
            dims = array.metadata.dimension_names or ()
            if dims and dims[0] == TOKEN and array.shape[0] != n_tokens:
                array.resize((n_tokens, *array.shape[1:]))
        self.n_texts_done = int(progress["n_texts_done"])
        self.n_tokens_written = n_tokens

    def _write_progress(self, n_texts_done: int) -> None:
        progress = progress_path(self.store)
        tmp = progress.with_name(progress.name + ".tmp")
        tmp.write_text(json.dumps({"n_texts_done": n_texts_done, "n_tokens": self.n_tokens_written}))
        os.replace(tmp, progress)

    # -- adding data ------------------------------------------------------------------------
    def add(self, layers: list[int], coords: dict, data: dict, n_texts_done: int) -> None:
        """Buffer one batch's (token, ...) arrays; write once enough tokens are waiting."""
        self._layers = layers
        if "router_logits" in data:
            data = data | {"router_logits": data["router_logits"].astype(self.logits_dtype)}
        self._pending.append((coords, data))
        self.n_texts_done = n_texts_done
        if sum(len(c["seq"]) for c, _ in self._pending) >= self.chunk_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        coords = {k: np.concatenate([c[k] for c, _ in self._pending]) for k in self._pending[0][0]}
        data = {k: np.concatenate([d[k] for _, d in self._pending]) for k in self._pending[0][1]}
        self._pending.clear()
        ds = build_dataset(self._layers, coords, data, self.attrs)
        if self.store is None:
            self._kept.append(ds)
            return
        partial = partial_path(self.store)
        if self.n_tokens_written == 0:
            ds.to_zarr(partial, mode="w-", encoding=_encoding(ds, self.chunk_tokens), consolidated=False)
        else:
            ds.to_zarr(partial, append_dim=TOKEN, consolidated=False)
        self.n_tokens_written += ds.sizes[TOKEN]
        self._write_progress(self.n_texts_done)

    def finish(self) -> xr.Dataset:
        """Write what is left, seal the store (rename into place), and return the trace."""
        self._flush()
        final_attrs = {"n_texts": self.n_texts_done}
        if self.store is None:
            ds = xr.concat(self._kept, dim=TOKEN) if len(self._kept) > 1 else self._kept[0]
            ds.attrs = self.attrs | final_attrs | {"n_tokens": ds.sizes[TOKEN]}
            return ds
        partial = partial_path(self.store)
        if self.n_tokens_written == 0:
            raise TraceStoreError(f"{self.store}: nothing was written (no tokens)")
        group = zarr.open_group(partial, mode="r+")
        group.attrs.update(self.attrs | final_attrs | {"n_tokens": self.n_tokens_written})
        os.rename(partial, self.store)
        progress_path(self.store).unlink()
        return open_trace(self.store)
