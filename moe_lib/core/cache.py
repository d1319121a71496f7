"""Content-addressed cache of traces and analysis results under data-cache/.

Every store is ``<cache dir>/<name>-<key>.zarr``, where ``key`` hashes what the result was
made from (the ``identity``: model, data fingerprint, parameters) and the schema version.
Its attrs repeat the key and the identity, so a store is used only when it says it was
made from exactly what is asked for. Stores are written beside their final path and
renamed into place when complete (see :mod:`moe_lib.core.trace_store`): a crash leaves at most
a ``.partial`` folder, which is resumed (traces) or discarded (tables), never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import xarray as xr
import zarr

from moe_lib.core.schema import SCHEMA_VERSION
from moe_lib.core.trace_store import open_trace, partial_path

ROW = "row"  # the one dim of a cached table


def cache_dir() -> Path:
    """Return the cache folder: $MOE_LIB_CACHE, else data-cache/ at the project root."""
    env = os.environ.get("MOE_LIB_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data-cache"


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(identity: dict) -> str:
    """Return the 16-hex-digit key of ``identity`` (JSON-native values), schema included."""
    payload = _canonical({"identity": identity, "schema_version": SCHEMA_VERSION})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def fingerprint(texts: Iterable[str], labels: dict | None = None) -> str:
    """Return a sha256 over texts and their labels, in order: a dataset's identity."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    digest.update(_canonical(labels or {}).encode())
    return digest.hexdigest()[:16]


def store_path(name: str, identity: dict) -> Path:
    """Return the path of the store of ``name`` made from ``identity``."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"cache name {name!r}: use a plain, non-empty name without '/'")
    return cache_dir() / f"{name}-{cache_key(identity)}.zarr"


def _read_attrs(path: Path) -> dict | None:
    try:
        return zarr.open_group(path, mode="r").attrs.asdict()
    except Exception:  # not a Zarr group, or unreadable: not a usable store either way
        return None


def _usable(path: Path, key: str) -> bool:
    """Return whether ``path`` is a complete store whose attrs say it was made for ``key``."""
    attrs = _read_attrs(path) if path.exists() else None
    return attrs is not None and attrs.get("cache_key") == key


def _discard(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _provenance(name: str, identity: dict) -> dict:
    return {"cache_name": name, "cache_key": cache_key(identity), "cache_identity": _canonical(identity)}


def trace_identity(identity: dict, texts: list[str], labels, collect_kwargs: dict) -> dict:
    """Return the full identity of a trace: ``identity`` plus the data's fingerprint and the
    collection parameters (target spans by fingerprint; progress and store left out)."""
    full = {
        **identity,
        "texts": fingerprint(texts, labels),
        "collect": {k: v for k, v in collect_kwargs.items() if k not in ("progress", "store")},
    }
    if collect_kwargs.get("target_spans") is not None:
        full["collect"]["target_spans"] = fingerprint(map(str, collect_kwargs["target_spans"]))
    return full


def cached_trace(name: str, identity: dict, model, tokenizer, texts, *, labels=None, **collect_kwargs) -> xr.Dataset:
    """Return the trace of ``model`` on ``texts`` from the cache, collecting it if missing.

    ``identity`` names the model and the data (e.g. model name and revision or checkpoint
    step, dataset name); the texts' and labels' fingerprint and the collection parameters
    are added to it here. An interrupted collection resumes where it stopped.
    """
    from moe_lib.core.traces import collect_trace

    texts = list(texts)
    identity = trace_identity(identity, texts, labels, collect_kwargs)
    path = store_path(name, identity)
    key = cache_key(identity)
    if _usable(path, key):
        return open_trace(path)
    _discard(path)  # stale: made from something else, or not a store at all
    attrs = {**collect_kwargs.pop("attrs", {}), **_provenance(name, identity)}
    attrs.setdefault("dataset_fingerprint", identity["texts"])
    return collect_trace(model, tokenizer, texts, labels=labels, store=path, attrs=attrs, **collect_kwargs)


def _write_atomically(ds: xr.Dataset, path: Path) -> None:
    partial = partial_path(path)
    _discard(partial)
    ds.to_zarr(partial, mode="w-", consolidated=False)
    _discard(path)
    os.rename(partial, path)


def cached_dataset(name: str, identity: dict, compute: Callable[[], xr.Dataset]) -> xr.Dataset:
    """Return the Dataset ``compute()`` gives for ``identity``, from the cache if there."""
    path, key = store_path(name, identity), cache_key(identity)
    if not _usable(path, key):
        ds = compute()
        ds.attrs.update(_provenance(name, identity))
        _write_atomically(ds, path)
    return xr.open_zarr(path, consolidated=False).load()


def table_to_dataset(df: pd.DataFrame) -> xr.Dataset:
    """Return a tidy table as a Dataset along one ``row`` dim, ready for Zarr (text columns
    as objects, the column order in attrs); :func:`dataset_to_table` reads it back."""
    flat = df.reset_index(drop=True)
    columns = {}
    for column in flat.columns:
        values = flat[column].to_numpy()
        if values.dtype.kind in "OUT" or pd.api.types.is_string_dtype(flat[column]):
            values = values.astype(object)
        columns[str(column)] = ((ROW,), values)
    return xr.Dataset(columns, attrs={"columns": [str(c) for c in flat.columns]})


def dataset_to_table(ds: xr.Dataset) -> pd.DataFrame:
    """Return the table :func:`table_to_dataset` stored."""
    return pd.DataFrame({c: ds[c].values for c in ds.attrs["columns"]})


def cached_table(name: str, identity: dict, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """Return the tidy table ``compute()`` gives for ``identity``, from the cache if there."""
    ds = cached_dataset(name, identity, lambda: table_to_dataset(compute()))
    return dataset_to_table(ds)


def _size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_stores(directory: Path | None = None) -> pd.DataFrame:
    """Return one row per complete store: name, key, model, dataset, tokens, bytes, created."""
    directory = directory or cache_dir()
    rows = []
    for path in sorted(directory.glob("*.zarr")) if directory.exists() else []:
        attrs = _read_attrs(path)
        if attrs is None or "cache_key" not in attrs:
            continue
        rows.append(
            {
                "name": attrs.get("cache_name", path.stem),
                "key": attrs["cache_key"],
                "model": attrs.get("model", ""),
                "dataset": attrs.get("dataset", ""),
                "tokens": int(attrs.get("n_tokens", 0)),
                "bytes": _size_bytes(path),
                "created": attrs.get("created", ""),
                "path": str(path),
            }
        )
    columns = ["name", "key", "model", "dataset", "tokens", "bytes", "created", "path"]
    return pd.DataFrame(rows, columns=columns)


def find_traces(directory: Path | None = None, **attrs) -> list[Path]:
    """Return the cached trace stores whose attrs equal every ``attrs`` given, oldest first."""
    stores = list_stores(directory)
    found = []
    for path in stores["path"]:
        store_attrs = _read_attrs(Path(path)) or {}
        if "expert_id" in os.listdir(path) and all(store_attrs.get(k) == v for k, v in attrs.items()):
            found.append((store_attrs.get("created", ""), Path(path)))
    return [path for _, path in sorted(found)]


def interrupted_writes(directory: Path | None = None) -> list[Path]:
    """Return the ``.partial`` stores left by interrupted writes (resumable traces)."""
    directory = directory or cache_dir()
    return sorted(directory.glob("*.zarr.partial"))


__all__ = [
    "cache_dir",
    "cache_key",
    "cached_dataset",
    "cached_table",
    "cached_trace",
    "find_traces",
    "fingerprint",
    "list_stores",
    "store_path",
]
