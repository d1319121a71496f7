"""The cache: keyed by what a result was made from, atomic, never serving a stale store."""

import json
import shutil

import pandas as pd
import pytest
import zarr

from moe_lib.core import cache

TEXTS = ["the bank of the river", "a key to the door", "def f(x): return x"]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def olmoe():
    from moe_lib.models.tiny import tiny_model

    return tiny_model("olmoe")


def _counting(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


def test_key_changes_with_identity_and_is_stable():
    a = cache.cache_key({"model": "m", "step": 1})
    assert a == cache.cache_key({"step": 1, "model": "m"})
    assert a != cache.cache_key({"model": "m", "step": 2})
    assert len(a) == 16


def test_cached_trace_is_computed_once(olmoe, tokenizer):
    calls, handle = _counting(olmoe)
    try:
        first = cache.cached_trace("probe", {"model": "tiny"}, olmoe, tokenizer, TEXTS, progress=False)
        n_forwards = len(calls)
        again = cache.cached_trace("probe", {"model": "tiny"}, olmoe, tokenizer, TEXTS, progress=False)
    finally:
        handle.remove()
    assert n_forwards > 0 and len(calls) == n_forwards
    assert first.attrs["cache_key"] == again.attrs["cache_key"]
    # other texts are another dataset: another key, another store
    other = cache.cached_trace("probe", {"model": "tiny"}, olmoe, tokenizer, TEXTS[:2], progress=False)
    assert other.attrs["cache_key"] != first.attrs["cache_key"]
    assert len(cache.list_stores()) == 2


def test_store_whose_attrs_do_not_match_its_key_is_rebuilt(olmoe, tokenizer):
    ds = cache.cached_trace("probe", {"model": "tiny"}, olmoe, tokenizer, TEXTS, progress=False)
    path = cache.cache_dir() / f"probe-{ds.attrs['cache_key']}.zarr"
    group = zarr.open_group(path, mode="r+")
    group.attrs["cache_key"] = "0000000000000000"  # as if made from something else
    calls, handle = _counting(olmoe)
    try:
        rebuilt = cache.cached_trace("probe", {"model": "tiny"}, olmoe, tokenizer, TEXTS, progress=False)
    finally:
        handle.remove()
    assert calls and rebuilt.attrs["cache_key"] == ds.attrs["cache_key"]


def test_garbage_at_the_store_path_is_replaced(olmoe, tokenizer):
    identity = {"model": "tiny"}
    ds = cache.cached_trace("probe", identity, olmoe, tokenizer, TEXTS, progress=False)
    path = cache.cache_dir() / f"probe-{ds.attrs['cache_key']}.zarr"
    shutil.rmtree(path)
    path.mkdir()
    (path / "zarr.json").write_text("{ truncated")
    rebuilt = cache.cached_trace("probe", identity, olmoe, tokenizer, TEXTS, progress=False)
    assert rebuilt.sizes["token"] == ds.sizes["token"]


def test_cached_table_round_trip_and_atomicity():
    table = pd.DataFrame({"layer": [0, 1, 2], "expert": ["a", "b🙂", ""], "share": [0.5, 0.25, 0.25]})
    calls = []

    def compute():
        calls.append(1)
        return table

    out = cache.cached_table("load", {"trace": "k1"}, compute)
    again = cache.cached_table("load", {"trace": "k1"}, compute)
    pd.testing.assert_frame_equal(out, table, check_dtype=False)
    pd.testing.assert_frame_equal(again, table, check_dtype=False)
    assert len(calls) == 1

    def crash():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.cached_table("load", {"trace": "k2"}, crash)
    assert not cache.store_path("load", {"trace": "k2"}).exists()


def test_cache_ls_json(olmoe, tokenizer, capsys):
    from moe_lib.cli import main

    cache.cached_trace("probe", {"model": "tiny"}, olmoe, tokenizer, TEXTS, progress=False, attrs={"dataset": "three"})
    assert main(["cache", "ls", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0]["name"] == "probe" and records[0]["dataset"] == "three"
    assert records[0]["tokens"] > 0 and records[0]["bytes"] > 0
    assert set(records[0]) == {"name", "key", "model", "dataset", "tokens", "bytes", "created"}
