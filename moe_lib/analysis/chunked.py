"""Analyses out of core: reduce a Dask-backed trace block by block along ``token``.

``moe_lib.open_trace(path, chunks={"token": n})`` gives a trace whose variables are Dask
arrays. The analyses never load its token dimension: each applies its in-memory code to
one block of tokens at a time (a small, loaded Dataset) and adds the blocks' counts or
sums (:func:`sum_blocks`); quantiles are exact order statistics found by three passes of
radix histograms (:func:`exact_quantiles`). A block's work is a ``dask.delayed`` task, so
a ``dask.distributed`` client that the user has started runs the blocks on its workers;
without one, Dask's threads do. Memory stays near a few blocks, whatever the trace's size.

An in-memory trace goes through the same functions as one block, so its results are
those of the plain numpy code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

TOKEN = "token"


def _main_array(ds: xr.Dataset | xr.DataArray) -> xr.DataArray:
    """Return the array whose chunks set the blocks: ``expert_id``, else the first variable."""
    if isinstance(ds, xr.DataArray):
        return ds
    if "expert_id" in ds:
        return ds["expert_id"]
    return next(var for var in ds.data_vars.values() if TOKEN in var.dims)


def is_chunked(ds: xr.Dataset | xr.DataArray) -> bool:
    """Return whether the trace's routing is Dask-backed (opened with ``chunks=``)."""
    return hasattr(_main_array(ds).data, "dask")


def token_slices(ds: xr.Dataset) -> list[slice]:
    """Return the token ranges of the trace's blocks (those of ``expert_id``'s chunks)."""
    array = _main_array(ds)
    sizes = array.chunksizes.get(TOKEN, (ds.sizes[TOKEN],)) if is_chunked(ds) else (ds.sizes[TOKEN],)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def with_only(ds: xr.Dataset, names: Sequence[str] | None) -> xr.Dataset:
    """Return ``ds`` with only the named variables and token coordinates (smaller graphs)."""
    if names is None:
        return ds
    keep = set(names)
    drop = [name for name in ds.variables if name not in keep and name not in ds.dims]
    return ds.drop_vars(drop)


def _add(a, b):
    if isinstance(a, tuple):
        return tuple(_add(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) for k in a}
    return a + b


def _tree(parts: list, combine: Callable):
    """Return one delayed value combining ``parts`` pairwise (a tree: bounded memory)."""
    import dask

    while len(parts) > 1:
        parts = [dask.delayed(combine)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def sum_blocks(ds: xr.Dataset, func: Callable, names: Sequence[str] | None = None,
               overlap: int = 0, combine: Callable = _add):
    """Return ``func(block)`` summed over the trace's token blocks.

    ``func`` takes a loaded Dataset of some consecutive tokens and returns an array, a
    number, or a tuple or dict of them (added element-wise). ``overlap`` > 0 hands each
    block the first ``overlap`` tokens of the next as well, with ``block.attrs["n_own"]``
    its own token count (for measures of adjacent tokens); ``block.attrs["block"]`` is the
    block's index. ``names`` limits the variables loaded. An in-memory trace is one block.
    """
    slices, chunked = token_slices(ds), is_chunked(ds)
    ds = with_only(ds, names)
    if not chunked:
        ds = ds.copy(deep=False)
        ds.attrs = ds.attrs | {"n_own": ds.sizes[TOKEN], "block": 0}
        return func(ds)
    import dask

    n_tokens = ds.sizes[TOKEN]
    parts = []
    for index, piece in enumerate(slices):
        block = ds.isel(token=slice(piece.start, min(n_tokens, piece.stop + overlap)))
        block.attrs = block.attrs | {"n_own": piece.stop - piece.start, "block": index}
        parts.append(dask.delayed(func)(block))
    # In waves of a few blocks per thread: a scheduler handed every block at once may run
    # all of them before any sum, holding every block's result (counts per token id are
    # tens of MB) at the same time; a wave's results are added as soon as it is done.
    wave = 2 * _n_threads()
    total = None
    for first in range(0, len(parts), wave):
        (part,) = dask.compute(_tree(parts[first:first + wave], combine))
        total = part if total is None else combine(total, part)
    return total


def _n_threads() -> int:
    """Return how many blocks run at once: the user's dask.distributed client's threads, or
    the local scheduler's."""
    try:
        from distributed import default_client

        return max(1, sum(default_client().nthreads().values()))
    except (ImportError, ValueError):
        import os

        import dask

        return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


def map_blocks(ds: xr.Dataset, func: Callable, names: Sequence[str] | None = None) -> list:
    """Return ``[func(block) for block in blocks]``, computed block by block (as tasks)."""
    slices, chunked = token_slices(ds), is_chunked(ds)
    ds = with_only(ds, names)
    if not chunked:
        return [func(ds)]
    import dask

    return list(dask.compute(*[dask.delayed(func)(ds.isel(token=piece)) for piece in slices]))


def label_index(ds: xr.Dataset, name: str) -> pd.Index:
    """Return the sorted distinct non-missing values of label ``name`` (None, NaN and ""
    are missing), found block by block: the codes of ``common.label_codes``."""
    def distinct(block):
        values = pd.Series(block[name].values)
        values = values.mask(values.astype(str).eq(""))
        return set(values.dropna().unique().tolist())

    values = set().union(*map_blocks(ds, distinct, [name]))
    return pd.Index(sorted(values), name=name)


def codes_in(block: xr.Dataset, name: str, index: pd.Index) -> np.ndarray:
    """Return the code of each token's ``name`` value in ``index`` (token,), -1 if missing."""
    values = pd.Series(block[name].values)
    values = values.mask(values.astype(str).eq(""))
    return index.get_indexer(values).astype(np.int64)


def gather_tokens(ds: xr.Dataset, index: np.ndarray) -> xr.Dataset:
    """Return the tokens at ``index`` (sorted or not) loaded; a chunked trace reads only
    the blocks that hold them."""
    index = np.asarray(index, dtype=np.int64)
    order = np.argsort(index, kind="stable")
    loaded = ds.isel(token=index[order]).load()
    return loaded.isel(token=np.argsort(order, kind="stable"))


def shuffled_counts_by_block(counts: np.ndarray, block_sizes: Sequence[int], seed: int) -> np.ndarray:
    """Return how many of each value land in each block under a uniform random shuffle.

    A permutation of values over the tokens puts in block b a multivariate hypergeometric
    draw from what the blocks before left. Drawn block by block here (a small array), each
    block can then shuffle its own values (:func:`shuffled_block_values`) without any block
    seeing the whole token dimension: the result is a uniform permutation in distribution,
    though not the one ``rng.permutation`` over an in-memory array would draw.

    Returns
    -------
    array (block, value) int64
    """
    rng = np.random.default_rng(seed)
    left = np.asarray(counts, dtype=np.int64).copy()
    out = np.zeros((len(block_sizes), left.size), dtype=np.int64)
    for b, size in enumerate(block_sizes):
        if size:
            out[b] = rng.multivariate_hypergeometric(left, int(size), method="marginals")
            left -= out[b]
    return out


def shuffled_block_values(values: np.ndarray, counts: np.ndarray, seed: int, block: int) -> np.ndarray:
    """Return a block's shuffled values: ``counts[v]`` copies of ``values[v]``, in a random
    order seeded by (seed, block)."""
    rng = np.random.default_rng([seed, block])
    return rng.permutation(np.repeat(values, counts))


def exact_quantiles(ds: xr.Dataset, rows: Callable, n_rows: int, quantiles: Sequence[float],
                    names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return quantiles (quantile, row), sums and counts (row,) of values given block by block.

    ``rows(block)`` returns a float32 array (row, token) of a block's values. The order
    statistics that numpy's "linear" quantile interpolates between are found exactly by
    three passes of radix histograms (11, 11 and 10 bits of an order-preserving map of the
    float32 bit pattern), so no pass holds more than (row, 10 targets, 2048) counts.
    """
    def keys(block):
        bits = np.ascontiguousarray(rows(block), dtype=np.float32).view(np.uint32)
        # Flip negatives entirely and set positives' sign bit: unsigned order = float order.
        return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)

    def totals(block):
        values = np.asarray(rows(block), dtype=np.float32)
        return values.sum(axis=1, dtype=np.float64), np.full(n_rows, values.shape[1], np.int64)

    sums, counts = sum_blocks(ds, totals, names)
    n = int(counts[0])
    virtual = np.asarray(quantiles, np.float64) * (n - 1)
    ranks = np.unique(np.clip(np.concatenate([np.floor(virtual), np.floor(virtual) + 1]), 0, n - 1).astype(np.int64))
    target_row = np.repeat(np.arange(n_rows), ranks.size)
    remaining = np.tile(ranks, n_rows)  # rank of each target within its prefix
    prefix = np.zeros(target_row.size, np.uint64)
    for shift, width in ((21, 11), (10, 11), (0, 10)):
        above = shift + width
        table = np.unique((target_row.astype(np.uint64) << np.uint64(32)) | prefix)

        def histogram(block, table=table, shift=shift, width=width, above=above):
            key = keys(block)  # (row, token)
            query = (np.arange(n_rows, dtype=np.uint64)[:, None] << np.uint64(32)) | (key >> np.uint64(above))
            where = np.clip(np.searchsorted(table, query), 0, table.size - 1)
            match = table[where] == query
            digit = (key[match] >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            code = where[match].astype(np.int64) * (1 << width) + digit.astype(np.int64)
            return np.bincount(code, minlength=table.size << width)

        counts_by = sum_blocks(ds, histogram, names).reshape(table.size, 1 << width)
        slot = np.searchsorted(table, (target_row.astype(np.uint64) << np.uint64(32)) | prefix)
        cumulative = np.cumsum(counts_by[slot], axis=1)
        digit = (cumulative <= remaining[:, None]).sum(axis=1)
        before = np.where(digit > 0, np.take_along_axis(cumulative, np.maximum(digit - 1, 0)[:, None], 1)[:, 0], 0)
        remaining = remaining - before
        prefix = (prefix << np.uint64(width)) | digit.astype(np.uint64)
    key = prefix.astype(np.uint32)
    bits = np.where(key >> 31, key & np.uint32(0x7FFFFFFF), ~key)
    order_stats = bits.view(np.float32).astype(np.float64).reshape(n_rows, ranks.size)

    lo = np.searchsorted(ranks, np.clip(np.floor(virtual), 0, n - 1).astype(np.int64))
    hi = np.searchsorted(ranks, np.clip(np.floor(virtual) + 1, 0, n - 1).astype(np.int64))
    a, b = order_stats[:, lo], order_stats[:, hi]
    t = virtual - np.floor(virtual)
    # numpy's own lerp (numpy/lib/_function_base_impl.py, _lerp): from b when t >= 0.5.
    values = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)
    return values.T.astype(np.float32), sums, counts
